"""Tenants (FHIR_TENANCY=url): one PostgreSQL schema each, and the tenant the current request or job works in.

Every tenant's schema holds the full set of tables; shared extensions (pgvector, pg_trgm, fuzzystrmatch) live
in `public`. The tenant of the running task is a context variable, set where a request is routed or a job is
picked up; the pool (`storage.database.TenantPool`) points each connection it hands out at that tenant's
schema, so no query names a tenant and a connection can only ever see one tenant's rows.

`fhir-server tenants add/remove` announce the change (NOTIFY tenants) in the transaction that makes it: every
pool listening forgets what it knew of that tenant, so a removed tenant answers 404 at once, not after a recheck.
"""

import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from fhir_server.errors import FHIRError, Issue

NAME = re.compile(r"[a-z0-9-]{1,63}")
REGISTRY = "public.tenant"
CHANNEL = "tenants"
"""NOTIFY channel of registry changes; the payload is the tenant's name."""
# A name looked up and not found is not looked up again for this long (garbage in URLs costs no queries);
# a found tenant is checked again after this long. Both only matter when a change notification is missed.
RECHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    schema: str


current: ContextVar[Tenant | None] = ContextVar("tenant", default=None)
"""The tenant whose data the running request or job reads and writes; None without tenancy."""


class UnknownTenant(FHIRError):
    """No tenant of this name (any more): 404 with an OperationOutcome wherever it reaches a response."""

    def __init__(self, name: str) -> None:
        super().__init__(404, [Issue("not-found", f"No tenant {name!r} on this server")])
        self.name = name


def base_path(root: str) -> str:
    """The FHIR base path of the current tenant below the server's `root` (FHIR_BASE_PATH)."""
    tenant = current.get()
    return f"{root}/{tenant.name}" if tenant is not None else root


def require_valid_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"invalid tenant name {name!r}: use 1-63 of a-z, 0-9 and '-'")
    return name


async def use_schema(conn: AsyncConnection, schema: str) -> bool:
    """Point the connection at one tenant's schema (and the shared extensions in public); False, changing
    nothing, if the schema does not exist (a search_path naming a missing schema would fall through to public)."""
    path = sql.SQL("{}, public").format(sql.Identifier(schema)).as_string(conn)
    cursor = await conn.execute("SELECT set_config('search_path', %s, false) FROM pg_namespace WHERE nspname = %s",
                                (path, schema))
    return await cursor.fetchone() is not None


async def find(conn: AsyncConnection, name: str) -> Tenant | None:
    row = await (await conn.execute(f"SELECT schema_name FROM {REGISTRY} WHERE name = %s", (name,))).fetchone()
    return Tenant(name, row[0]) if row else None


async def all_tenants(conn: AsyncConnection) -> list[Tenant]:
    rows = await (await conn.execute(f"SELECT name, schema_name FROM {REGISTRY} ORDER BY name")).fetchall()
    return [Tenant(*row) for row in rows]


class Directory:
    """The registry as a process sees it: names resolved from memory, forgotten when a change is announced and
    rechecked every `RECHECK_SECONDS` through `find` (which looks one name up in the database)."""

    def __init__(self, find: Callable[[str], Awaitable[Tenant | None]]) -> None:
        self._find = find
        self._seen: dict[str, tuple[Tenant | None, float]] = {}

    async def resolve(self, name: str) -> Tenant:
        """The tenant of this name, or UnknownTenant."""
        tenant, checked = self._seen.get(name, (None, float("-inf")))
        if time.monotonic() - checked >= RECHECK_SECONDS:
            tenant = await self._find(name) if NAME.fullmatch(name) else None
            if len(self._seen) >= 10_000:
                self._seen.clear()
            self._seen[name] = (tenant, time.monotonic())
        if tenant is None:
            raise UnknownTenant(name)
        return tenant

    def known(self, name: str) -> Tenant | None:
        """The tenant of this name as last looked up, without looking."""
        return self._seen.get(name, (None, 0.0))[0]

    def forget(self, name: str | None = None) -> None:
        """Look `name` (every name, without one) up again on its next use."""
        if name is None:
            self._seen.clear()
        else:
            self._seen.pop(name, None)
