"""Connection pool and schema migrations for the PostgreSQL database (and for each tenant's schema)."""

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fhir_server.paths import MIGRATIONS_DIR
from fhir_server.storage import tenants
from fhir_server.storage.tenants import Tenant

log = logging.getLogger(__name__)

MIGRATION_LOCK = 815001
RELISTEN_SECONDS = 1.0

# PostgreSQL aborted the transaction to let a concurrent one proceed (a deadlock, or a serialization failure):
# running it again from the start is safe, and will most likely succeed.
ROLLED_BACK = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
               psycopg.errors.TransactionRollback)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy spelling of a libpq URL, so Alembic talks through psycopg 3."""
    scheme = urlsplit(url).scheme
    return "postgresql+psycopg" + url[len(scheme):]


def _upgrade(connection: Any, schema: str | None) -> None:
    """Alembic to head on `connection`, in `schema` (a tenant) or the default schema."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, "head")


def _announce(connection: Any, name: str) -> None:
    """NOTIFY every listening pool of a change to the tenant `name`; delivered when the transaction commits."""
    connection.exec_driver_sql("SELECT pg_notify(%s, %s)", (tenants.CHANNEL, name))


@contextmanager
def _locked_transaction(database_url: str) -> Iterator[Any]:
    """A SQLAlchemy transaction holding the migration lock: serialises concurrent start-ups (several uvicorn
    workers, a second server) and tenant administration."""
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            yield connection
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    """Bring the default schema, then every tenant's schema, to the newest Alembic revision (atomically)."""
    with _locked_transaction(database_url) as connection:
        _upgrade(connection, None)  # first: it installs the shared extensions and the tenant registry
        for (schema,) in connection.exec_driver_sql(f"SELECT schema_name FROM {tenants.REGISTRY} ORDER BY name").all():
            _upgrade(connection, schema)


def add_tenant(database_url: str, name: str) -> Tenant:
    """Register a tenant and create its schema with every table, in one transaction (ValueError if taken)."""
    from psycopg import sql

    tenants.require_valid_name(name)
    migrate(database_url)  # the registry and the shared extensions exist before the first tenant
    with _locked_transaction(database_url) as connection:
        row = connection.exec_driver_sql(
            f"INSERT INTO {tenants.REGISTRY} (name) VALUES (%s) ON CONFLICT DO NOTHING RETURNING schema_name",
            (name,)).fetchone()
        if row is None:
            raise ValueError(f"tenant {name!r} exists already")
        schema = row[0]
        connection.exec_driver_sql(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string(None))
        _upgrade(connection, schema)
        _announce(connection, name)  # pools that looked the name up before forget that it was unknown
    return Tenant(name, schema)


def remove_tenant(database_url: str, name: str) -> Tenant | None:
    """Drop a tenant's schema with all its data and unregister it; None if there is no such tenant."""
    from psycopg import sql

    with _locked_transaction(database_url) as connection:
        row = connection.exec_driver_sql(f"DELETE FROM {tenants.REGISTRY} WHERE name = %s RETURNING schema_name",
                                         (name,)).fetchone()
        if row is None:
            return None
        connection.exec_driver_sql(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(row[0])).as_string(None))
        _announce(connection, name)
    return Tenant(name, row[0])


class TenantPool(AsyncConnectionPool):
    """The pool of a multi-tenant server: every connection it hands out sees the schema of the current tenant
    (`tenants.current`) and nothing else. This is the one place where storage is scoped to a tenant.

    `SET search_path` is sent only when a connection last served another tenant. Prepared statements stay
    valid: PostgreSQL re-parses a prepared statement when the search_path differs from its last use.

    While open, the pool listens for tenant changes (`tenants.CHANNEL`): a removed tenant is forgotten at once,
    and connections that served it check its schema again before their next use, since PostgreSQL skips a
    dropped schema in the search_path silently and the query would fall through to the tables in public.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.directory = tenants.Directory(self._find)
        self._schemas: weakref.WeakKeyDictionary[AsyncConnection, str] = weakref.WeakKeyDictionary()
        self._listener: asyncio.Task | None = None

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        await super().open(wait, timeout)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="tenant-changes")

    async def close(self, timeout: float = 5.0) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await super().close(timeout)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {tenants.CHANNEL}")
                    self._forget(None)  # whatever changed while nobody listened
                    async for notice in conn.notifies():
                        self._forget(notice.payload)
            except (psycopg.Error, OSError) as error:
                log.warning("tenant changes: %s; listening again in %ss", error, RELISTEN_SECONDS)
                self._forget(None)
                await asyncio.sleep(RELISTEN_SECONDS)

    def _forget(self, name: str | None) -> None:
        """Resolve `name` (every tenant, without one) again, and check the schema of connections that served it
        (of every connection, when the name's schema is not known here)."""
        tenant = self.directory.known(name) if name is not None else None
        self.directory.forget(name)
        for conn, schema in list(self._schemas.items()):
            if tenant is None or schema == tenant.schema:
                self._schemas.pop(conn, None)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection]:
        tenant = tenants.current.get()
        if tenant is None:
            raise RuntimeError("no tenant selected: on a multi-tenant server every query runs in one tenant")
        async with super().connection(timeout) as conn:
            if self._schemas.get(conn) != tenant.schema:
                self._schemas.pop(conn, None)
                if not await tenants.use_schema(conn, tenant.schema):
                    self.directory.forget(tenant.name)  # removed since it was resolved: the next request is 404 too
                    raise tenants.UnknownTenant(tenant.name)
                self._schemas[conn] = tenant.schema
            yield conn

    async def resolve(self, name: str) -> Tenant:
        """The registered tenant of this name (UnknownTenant otherwise); from memory most of the time."""
        return await self.directory.resolve(name)

    async def _find(self, name: str) -> Tenant | None:
        async with super().connection() as conn:  # the registry is in public, outside every tenant
            return await tenants.find(conn, name)

    async def all_tenants(self) -> list[Tenant]:
        async with super().connection() as conn:
            return await tenants.all_tenants(conn)


NEVER_PREPARE_AUTOMATICALLY = 2**31 - 1
"""psycopg prepares a statement after this many executions; only `prepare=True` ones reach the server prepared."""


def create_pool(database_url: str, size: int, tenancy: str = "none") -> AsyncConnectionPool:
    """Connections in autocommit mode: a read is one statement and one round trip; writes open a
    transaction explicitly (`conn.transaction()`). With `tenancy="url"`, a `TenantPool`.

    Nothing is prepared automatically: a prepared search soon runs on PostgreSQL's generic plan, which
    is blind to how selective its values are (an unselective `_has` ran 3x slower). The hot fixed
    statements of the repository ask to be prepared (`prepare=True`). The threshold must be a number for
    that: psycopg ignores `prepare=True` when it is None.
    """
    kind = TenantPool if tenancy == "url" else AsyncConnectionPool
    return kind(database_url, min_size=size, max_size=size, open=False,
                kwargs={"autocommit": True, "prepare_threshold": NEVER_PREPARE_AUTOMATICALLY})
