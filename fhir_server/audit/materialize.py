"""The background job that turns `audit_log` records into AuditEvent resources, searchable like any other.

Each round takes up to `BATCH` records (SKIP LOCKED, so several workers share the work), stores them as
AuditEvents with one set-based insert (repository.create_many) and deletes them, in one transaction.
"""

import asyncio
import logging
from collections.abc import Callable

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from fhir_server.storage import repository, tenants
from fhir_server.storage.database import TenantPool

log = logging.getLogger(__name__)

BATCH = 1000
DUTY = 0.2
MAX_WAIT = 30.0
_TAKE = ("DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log LIMIT %s FOR UPDATE SKIP LOCKED) "
         "RETURNING id::text, event")


async def materialize_once(pool: AsyncConnectionPool, limit: int = BATCH) -> int:
    """Turn up to `limit` records into AuditEvents; returns how many records were taken."""
    async with pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(_TAKE, (limit,))).fetchall()
        if not rows:
            return 0
        # A journal replayed after a crash may bring back records already turned into AuditEvents.
        stored = await (await conn.execute(
            "SELECT fhir_id FROM resource WHERE resource_type = 'AuditEvent' AND fhir_id = ANY(%s)",
            ([row[0] for row in rows],))).fetchall()
        known = {row[0] for row in stored}
        await repository.create_many(conn, [orjson.loads(event) for fhir_id, event in rows if fhir_id not in known],
                                     keep_ids=True)
    return len(rows)


async def materialize_forever(pool: AsyncConnectionPool, interval: float,
                              busy: Callable[[], bool] = lambda: False) -> None:
    """Every `interval`, while the server is not `busy` serving requests, and at most `DUTY` of the time.

    Indexing an AuditEvent costs about as much CPU as the read it records, so under load the records wait
    (safely, in `audit_log`) instead of slowing the requests down: one batch every `MAX_WAIT` seconds, then
    everything once the load drops.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(interval)
        if busy() and loop.time() - last < MAX_WAIT:
            continue
        started = last = loop.time()
        try:
            for tenant in await pool.all_tenants() if isinstance(pool, TenantPool) else [None]:
                selected = tenants.current.set(tenant)
                try:
                    while await materialize_once(pool) == BATCH and not busy():
                        pass
                finally:
                    tenants.current.reset(selected)
        except psycopg.Error as error:
            log.warning("audit: turning records into AuditEvents failed: %s; trying again in %ss", error, interval)
        await asyncio.sleep((loop.time() - started) * (1 - DUTY) / DUTY)
