"""Running background work: the relay from the outbox to the Dramatiq broker, and the workers for its actors.

`fhir-server worker` runs them against Redis (FHIR_REDIS_URL). Without Redis, `fhir-server serve` runs
them in its own process on Dramatiq's StubBroker, so the one command also delivers. Either way the actors
run in Dramatiq's worker threads and do their database work on one event loop through one pool.
"""

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import dramatiq
import psycopg
from dramatiq import Broker, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from psycopg_pool import AsyncConnectionPool

from fhir_server.audit.materialize import Activity, materialize_forever
from fhir_server.settings import Settings
from fhir_server.storage import tenants
from fhir_server.storage.database import TenantPool
from fhir_server.storage.tenants import Tenant
from fhir_server.worker import outbox

log = logging.getLogger(__name__)

T = TypeVar("T")
QUEUE = "fhir"
RELAY_BATCH = 100
STOP_TIMEOUT_MS = 10_000


@dataclass(slots=True)
class Runtime:
    """What an actor needs: the settings, and a pool together with the event loop it lives on."""

    settings: Settings
    pool: AsyncConnectionPool
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the runtime's loop from a worker thread and wait for its result.

        The coroutine runs in a copy of the calling thread's context (`run_coroutine_threadsafe` schedules
        it from here), so it works in the tenant that `in_tenant` selected.
        """
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @contextmanager
    def in_tenant(self, name: str | None) -> Iterator[bool]:
        """Select the tenant a message was sent for (None without tenancy); yields False if it is gone."""
        if name is None:
            yield True
            return
        try:
            tenant = self.run(self.pool.resolve(name))
        except tenants.UnknownTenant:
            tenant = None
        if tenant is None:
            yield False
            return
        selected = tenants.current.set(tenant)
        try:
            yield True
        finally:
            tenants.current.reset(selected)


def handlers() -> dict[str, Callable[[Runtime, int], None]]:
    """Outbox topic -> the function its actor runs with the outbox row id."""
    from fhir_server.messaging.delivery import deliver
    from fhir_server.messaging.requests import TOPIC
    from fhir_server.operations import patient_merge, patient_merge_job
    from fhir_server.worker import jobs

    return {TOPIC: deliver, patient_merge.TOPIC: patient_merge_job.perform,
            **{topic: jobs.handler(job) for topic, job in jobs.jobs().items()}}


def make_broker(settings: Settings, runtime: Runtime) -> Broker:
    """Redis when configured, else an in-memory StubBroker; with one actor per outbox topic declared on it."""
    broker: Broker = RedisBroker(url=settings.redis_url) if settings.redis_url else StubBroker()
    for topic, handler in handlers().items():
        def perform(outbox_id: int, tenant: str | None = None,
                    handler: Callable[[Runtime, int], None] = handler) -> None:
            with runtime.in_tenant(tenant) as present:
                if present:
                    handler(runtime, outbox_id)
                else:
                    log.warning("outbox row %s belongs to tenant %r, which no longer exists", outbox_id, tenant)

        # Dramatiq's own retries cover failures of the actor itself (e.g. the database was away); delivery
        # retries are scheduled in the outbox, where they survive restarts.
        dramatiq.actor(perform, broker=broker, actor_name=topic, queue_name=QUEUE, max_retries=10,
                       min_backoff=1_000, max_backoff=60_000)
    return broker


def _enqueue(broker: Broker, rows: list[tuple[int, str, Any, Any]], tenant: Tenant | None) -> None:
    for outbox_id, topic, *_ in rows:
        if topic in broker.actors:
            # Outbox ids are per tenant schema: the message names the tenant whose row it is.
            broker.get_actor(topic).send(outbox_id, *([tenant.name] if tenant is not None else []))
        else:
            log.warning("outbox row %s has topic %r, which no actor handles; it waits", outbox_id, topic)


async def relay_once(runtime: Runtime, broker: Broker) -> int:
    """Hand due outbox rows to the broker, every tenant's in turn; a broker failure rolls the claim back, so
    the rows wait. Returns the largest number of rows relayed for one tenant."""
    pool = runtime.pool
    relayed = 0
    for tenant in await pool.all_tenants() if isinstance(pool, TenantPool) else [None]:
        selected = tenants.current.set(tenant)
        try:
            async with pool.connection() as conn, conn.transaction():
                rows = await outbox.claim(conn, RELAY_BATCH, runtime.settings.outbox_redeliver_seconds)
                if rows:
                    await asyncio.to_thread(_enqueue, broker, rows, tenant)
        finally:
            tenants.current.reset(selected)
        relayed = max(relayed, len(rows))
    return relayed


async def relay_forever(runtime: Runtime, broker: Broker) -> None:
    """Relay whenever work is committed (LISTEN outbox) and at least every `outbox_poll_seconds`, which is
    also how scheduled and retried work is picked up when it falls due."""
    poll = runtime.settings.outbox_poll_seconds
    listener: psycopg.AsyncConnection | None = None
    try:
        while True:
            try:
                if listener is None:
                    listener = await psycopg.AsyncConnection.connect(runtime.pool.conninfo, autocommit=True)
                    await listener.execute("LISTEN outbox")
                while await relay_once(runtime, broker) == RELAY_BATCH:
                    pass
                async for _ in listener.notifies(timeout=poll, stop_after=1):
                    pass
            except (psycopg.Error, OSError, dramatiq.DramatiqError) as error:
                log.warning("outbox relay: %s; trying again in %ss", error, poll)
                if listener is not None:
                    await listener.close()
                    listener = None
                await asyncio.sleep(poll)
    finally:
        if listener is not None:
            await listener.close()


class BackgroundWork:
    """The relay and a Dramatiq worker inside the current process, started and stopped on its event loop."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool, activity: Activity | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.activity = activity
        """How busy the process is serving requests (audit/materialize.py then waits)."""
        self.broker: Broker | None = None
        self.worker: Worker | None = None
        self.relay: asyncio.Task | None = None
        self.audit: asyncio.Task | None = None

    async def start(self) -> None:
        runtime = Runtime(self.settings, self.pool, asyncio.get_running_loop())
        self.broker = make_broker(self.settings, runtime)
        self.broker.emit_after("process_boot")
        self.worker = Worker(self.broker, worker_threads=self.settings.worker_threads, worker_timeout=100)
        self.worker.start()
        self.relay = asyncio.create_task(relay_forever(runtime, self.broker), name="outbox-relay")
        self.audit = asyncio.create_task(materialize_forever(self.pool, self.settings.audit_flush_seconds,
                                                             self.activity),
                                         name="audit-events")

    async def stop(self) -> None:
        for task in (self.relay, self.audit):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if self.worker is not None:
            # In another thread: the worker threads may be waiting for coroutines on this very loop.
            await asyncio.to_thread(self.worker.stop, STOP_TIMEOUT_MS)
        if self.broker is not None:
            self.broker.close()


def in_process(settings: Settings) -> bool:
    """Whether `serve` runs the background work itself: always in-process without Redis, unless turned off."""
    return settings.background == "in-process" or (settings.background == "auto" and not settings.redis_url)


async def run_worker(settings: Settings) -> None:
    """`fhir-server worker`: relay and workers until SIGTERM or SIGINT."""
    from fhir_server.storage.database import create_pool

    pool = create_pool(settings.database_url, settings.worker_threads + 2, settings.tenancy)
    await pool.open(wait=True)
    work = BackgroundWork(settings, pool)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await work.start()
        log.info("worker running: %s threads, broker %s", settings.worker_threads, type(work.broker).__name__)
        await stopping.wait()
    finally:
        await work.stop()
        await pool.close()
