"""The background job that turns `audit_log` records into AuditEvent resources, searchable like any other.

Each round takes up to `BATCH` records (SKIP LOCKED, so several workers share the work), stores them as
AuditEvents with one set-based insert (repository.create_many) and deletes them, in one transaction.
"""

import asyncio
import logging
from typing import Protocol

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from fhir_server.storage import repository, tenants
from fhir_server.storage.database import TenantPool

log = logging.getLogger(__name__)

BATCH = 1000
DUTY = 0.2
MAX_WAIT = 30.0
IDLE_LOOK = 2.0
"""Seconds between looks at `audit_log` while this process records nothing (records of other processes, of
a replayed journal, or of a server whose job runs in `fhir-server worker`)."""
RECENT = 3
"""Intervals after this process last recorded an interaction during which the job keeps looking: its journal
reaches the table one flush later."""
# A journal replayed after a crash may bring back records already turned into AuditEvents: those are only
# deleted.
_TAKE = ("WITH taken AS (DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log LIMIT %s FOR UPDATE SKIP LOCKED) "
         "RETURNING id::text AS id, event) "
         "SELECT event, EXISTS (SELECT FROM resource r WHERE r.resource_type = 'AuditEvent' AND r.fhir_id = taken.id) "
         "FROM taken")
_ANY = "SELECT EXISTS (SELECT FROM audit_log)"


class Activity(Protocol):
    """What the job knows of its own process's load (audit/journal.py's Journal)."""

    recorded: int

    def busy(self) -> bool: ...


async def materialize_once(pool: AsyncConnectionPool, limit: int = BATCH) -> int:
    """Turn up to `limit` records into AuditEvents; returns how many records were taken."""
    async with pool.connection() as conn:
        if not (await (await conn.execute(_ANY, prepare=True)).fetchone())[0]:
            return 0  # one cheap statement when there is nothing to do, no transaction
        async with conn.transaction():
            rows = await (await conn.execute(_TAKE, (limit,), prepare=True)).fetchall()
            await repository.create_many(conn, [orjson.loads(event) for event, known in rows if not known],
                                         keep_ids=True)
    return len(rows)


async def materialize_forever(pool: AsyncConnectionPool, interval: float, activity: Activity | None = None
                              ) -> None:
    """Every `interval` while this process records interactions (`activity`), every `IDLE_LOOK` otherwise;
    while the process is busy serving requests, and at most `DUTY` of the time.

    Indexing an AuditEvent costs about as much CPU as the read it records, so under load the records wait
    (safely, in `audit_log`) instead of slowing the requests down: one batch every `MAX_WAIT` seconds, then
    everything once the load drops.
    """
    loop = asyncio.get_running_loop()
    looked = changed = loop.time()
    seen = -1
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        if activity is not None and activity.recorded != seen:
            seen, changed = activity.recorded, now
        if now - changed > RECENT * interval and now - looked < IDLE_LOOK:
            continue
        if activity is not None and activity.busy() and now - looked < MAX_WAIT:
            continue
        started = looked = loop.time()
        taken = 0
        try:
            for tenant in await pool.all_tenants() if isinstance(pool, TenantPool) else [None]:
                selected = tenants.current.set(tenant)
                try:
                    while True:
                        batch = await materialize_once(pool)
                        taken += batch
                        if batch < BATCH or (activity is not None and activity.busy()):
                            break
                finally:
                    tenants.current.reset(selected)
        except psycopg.Error as error:
            log.warning("audit: turning records into AuditEvents failed: %s; trying again in %ss", error, interval)
        if taken:
            changed = loop.time()  # more may follow: keep looking at the pace of `interval`
            await asyncio.sleep((loop.time() - started) * (1 - DUTY) / DUTY)
