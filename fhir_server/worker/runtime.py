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


async def relay_tenant(runtime: Runtime, broker: Broker, tenant: Tenant | None) -> tuple[int, float | None]:
    """Hand the due outbox rows of one tenant to the broker; a broker failure rolls the claim back, so the rows
    wait. Returns how many were relayed, and in how many seconds more work falls due (a pending row's due
    time or a lease running out), None if there is no live work at all."""
    selected = tenants.current.set(tenant)
    try:
        async with runtime.pool.connection() as conn, conn.transaction():
            rows = await outbox.claim(conn, RELAY_BATCH, runtime.settings.outbox_redeliver_seconds)
            if rows:
                await asyncio.to_thread(_enqueue, broker, rows, tenant)
            return len(rows), await outbox.next_due_in(conn)
    finally:
        tenants.current.reset(selected)


async def relay_once(runtime: Runtime, broker: Broker) -> int:
    """Relay every tenant's due rows once; returns the largest number of rows relayed for one tenant."""
    pool = runtime.pool
    relayed = 0
    for tenant in await pool.all_tenants() if isinstance(pool, TenantPool) else [None]:
        relayed = max(relayed, (await relay_tenant(runtime, broker, tenant))[0])
    return relayed


class Relay:
    """When each tenant's outbox has work: woken by the outbox's notifications (NOTIFY outbox, naming the
    schema of the rows: new work, a retry, a due time moved) and by the earliest due time or lease it last
    saw in each tenant. So an idle tenant costs no queries, however many tenants there are.

    Nothing here needs to survive a crash: the rows are the state. A relay that starts, or whose listening
    connection broke (notifications may have been missed), looks at every tenant once (`sweep`).
    """

    def __init__(self, runtime: Runtime, broker: Broker) -> None:
        self.runtime = runtime
        self.broker = broker
        self.multi_tenant = isinstance(runtime.pool, TenantPool)
        self.tenants: dict[str, Tenant] = {}
        """schema -> tenant, as of the last look at the registry."""
        self.wake_at: dict[Tenant | None, float] = {}
        """tenant -> when (event loop time) its next work falls due."""

    async def sweep(self) -> None:
        await self._load_tenants()
        self.wake_at = dict.fromkeys(self.tenants.values() if self.multi_tenant else [None], 0.0)
        await self.run_due()

    async def _load_tenants(self) -> None:
        if self.multi_tenant:
            self.tenants = {tenant.schema: tenant for tenant in await self.runtime.pool.all_tenants()}

    async def notified(self, schemas: set[str]) -> None:
        """Work was committed in these schemas: relay it now."""
        if not self.multi_tenant:
            self.wake_at[None] = 0.0
        else:
            if "" in schemas or not schemas <= self.tenants.keys():  # a tenant added since (or an old trigger)
                await self._load_tenants()
            for schema in schemas:
                if schema in self.tenants:
                    self.wake_at[self.tenants[schema]] = 0.0
                elif schema == "":
                    self.wake_at.update(dict.fromkeys(self.tenants.values(), 0.0))
        await self.run_due()

    async def run_due(self) -> None:
        """Relay every tenant whose work is due, until none is."""
        loop = asyncio.get_running_loop()
        poll = self.runtime.settings.outbox_poll_seconds
        while due := [tenant for tenant, at in self.wake_at.items() if at <= loop.time()]:
            for tenant in due:
                try:
                    relayed, due_in = await relay_tenant(self.runtime, self.broker, tenant)
                except tenants.UnknownTenant:  # removed: its rows went with its schema
                    self.wake_at.pop(tenant, None)
                    continue
                if relayed == RELAY_BATCH:
                    due_in = 0.0
                elif due_in is not None and due_in <= 0:
                    # Due but not claimable: another relay's claim has not committed yet. Look again later.
                    due_in = poll
                self.wake_at[tenant] = loop.time() + due_in if due_in is not None else float("inf")

    def sleep_seconds(self) -> float | None:
        """Until the earliest known due time; None: until notified."""
        earliest = min(self.wake_at.values(), default=float("inf"))
        return None if earliest == float("inf") else max(0.0, earliest - asyncio.get_running_loop().time())


async def relay_forever(runtime: Runtime, broker: Broker) -> None:
    """Relay work when it is committed (LISTEN outbox) or falls due, never by polling every tenant."""
    retry = runtime.settings.outbox_poll_seconds
    relay = Relay(runtime, broker)
    listener: psycopg.AsyncConnection | None = None
    try:
        while True:
            try:
                if listener is None:
                    listener = await psycopg.AsyncConnection.connect(runtime.pool.conninfo, autocommit=True)
                    await listener.execute("LISTEN outbox")
                    await relay.sweep()
                schemas = {notice.payload async for notice in
                           listener.notifies(timeout=relay.sleep_seconds(), stop_after=1)}
                if schemas:  # take whatever else arrived meanwhile along
                    schemas |= {notice.payload async for notice in listener.notifies(timeout=0)}
                    await relay.notified(schemas)
                else:
                    await relay.run_due()
            except Exception as error:  # e.g. the database or the broker is away: the rows wait, nothing is lost
                log.warning("outbox relay: %r; trying again in %ss", error, retry)
                if listener is not None:
                    await listener.close()
                    listener = None
                await asyncio.sleep(retry)
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
