"""The outbox relay of a real `fhir-server worker` over several tenants: idle tenants cost it no queries (it is
woken by NOTIFY outbox naming the tenant's schema, and by a timer at the next due time), and work committed
while no relay ran is relayed when one starts."""

import asyncio
import signal
import time
from datetime import datetime, timedelta, timezone

import psycopg

from tests.messaging.helpers import eventually
from tests.tenancy.conftest import cli
from tests.workflow.helpers import task

IDLE_TENANTS = ("idle-1", "idle-2", "idle-3")


def _due(seconds: float) -> dict:
    end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return {"period": {"end": end.isoformat(timespec="milliseconds")}}


def _scans(db: psycopg.Connection) -> int:
    """How often the idle tenants' outbox tables have been read (PostgreSQL's statistics: an idle backend
    flushes its counts within PGSTAT_IDLE_INTERVAL, 10 s); nothing but a relay reads them."""
    return db.execute("SELECT sum(seq_scan + coalesce(idx_scan, 0))::int FROM pg_stat_user_tables "
                      "WHERE relname = 'outbox' AND schemaname IN (SELECT schema_name FROM public.tenant "
                      "WHERE name = ANY(%s))", (list(IDLE_TENANTS),)).fetchone()[0]


def _states(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT id, state FROM outbox ORDER BY id").fetchall()


async def _settled(db: psycopg.Connection) -> int:
    """The scans of the idle tenants' outboxes once they have stayed the same for longer than the statistics
    take to arrive (a relay starting looks at every tenant once, after the worker has migrated every schema)."""
    deadline = time.monotonic() + 120
    scans, since = _scans(db), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = _scans(db)
        if now != scans:
            scans, since = now, time.monotonic()
        elif scans and time.monotonic() - since >= 11:
            return scans
    raise AssertionError("the relay kept reading idle tenants' outboxes")


async def test_idle_tenants_cost_the_relay_no_queries(database_url: str, tenancy, http, tenant_db,
                                                      worker_process) -> None:
    for name in IDLE_TENANTS:
        cli(database_url, "tenants", "add", name)
    try:
        worker = worker_process(FHIR_TENANCY="url")
        with psycopg.connect(database_url, autocommit=True) as db:
            settled = await _settled(db)
            for _ in range(8):  # four more seconds, and not one look at an idle tenant's outbox
                await asyncio.sleep(0.5)
                assert _scans(db) == settled

            # Work due in a second and a half, in one tenant: the relay learns of it from the notification and
            # hands it out when it falls due, by its timer.
            created = http["alpha"].put("/Task/t1", json=task("requested", id="t1", restriction=_due(1.5)))
            assert created.status_code == 201, created.text
            await eventually(lambda: _states(tenant_db["alpha"]) == [(1, "done")], 15)
            assert _states(tenant_db["beta"]) == []

            # Work committed while no relay runs (the worker crashed) is relayed when one starts again.
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            created = http["beta"].put("/Task/t2", json=task("requested", id="t2", restriction=_due(0)))
            assert created.status_code == 201, created.text
            await asyncio.sleep(1)
            assert _states(tenant_db["beta"]) == [(1, "pending")]
            worker_process(FHIR_TENANCY="url")
            await eventually(lambda: _states(tenant_db["beta"]) == [(1, "done")], 20)
    finally:
        for name in IDLE_TENANTS:
            cli(database_url, "tenants", "remove", name, "--yes", check=False)
