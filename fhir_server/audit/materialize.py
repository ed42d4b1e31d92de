"""The background job that turns `audit_log` records into AuditEvent resources, searchable like any other.

Each round takes up to `BATCH` records (SKIP LOCKED, so several workers share the work), stores them as
AuditEvents with one set-based insert (repository.create_many) and deletes them, in one transaction.
"""

import asyncio
import logging

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from fhir_server.storage import repository

log = logging.getLogger(__name__)

BATCH = 1000
DUTY = 0.2
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


async def materialize_forever(pool: AsyncConnectionPool, interval: float) -> None:
    """Every `interval`, and at most `DUTY` of the time: indexing AuditEvents costs about as much CPU as the
    reads they record, so under a sustained load the records wait (safely, in `audit_log`) instead of
    slowing the requests down, and are caught up with when the load drops."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await materialize_once(pool)
        except psycopg.Error as error:
            log.warning("audit: turning records into AuditEvents failed: %s; trying again in %ss", error, interval)
        await asyncio.sleep(max(interval, (loop.time() - started) * (1 - DUTY) / DUTY))
