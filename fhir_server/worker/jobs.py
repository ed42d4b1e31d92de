"""Internal jobs: outbox work done wholly in the database, in the transaction that settles its row, so a
redelivered message finds the row done and does nothing (unlike a notification, no step lies outside).

A job that fails with a database error is retried by Dramatiq (and, failing that, redelivered when its
lease runs out); any other error is a bug or bad data: the row is dead-lettered with the error, which a
failed Task tells (worker/dead_letter.py).
"""

import logging
from collections.abc import Awaitable, Callable

import psycopg
from psycopg import AsyncConnection

from fhir_server.settings import Settings
from fhir_server.worker import dead_letter, outbox
from fhir_server.worker.runtime import Runtime

log = logging.getLogger(__name__)

Job = Callable[[AsyncConnection, Settings, outbox.Row], Awaitable[None]]


class Retry(Exception):
    """Raised by a job that depends on a service unavailable now (an embedding API): the transaction rolls
    back and Dramatiq runs the job again later, like after a database error."""


def jobs() -> dict[str, Job]:
    """Outbox topic -> the job that does its work."""
    from fhir_server.embeddings import index
    from fhir_server.messaging import threads
    from fhir_server.workflow import automation, overdue, recurrence

    return {overdue.TOPIC: overdue.flag, recurrence.TOPIC: recurrence.instantiate,
            automation.TOPIC: automation.execute, threads.AUTO_REPLY_TOPIC: threads.auto_reply,
            index.TOPIC: index.embed}


def handler(job: Job) -> Callable[[Runtime, int], None]:
    def perform(runtime: Runtime, outbox_id: int) -> None:
        runtime.run(_run(runtime, job, outbox_id))

    return perform


async def _run(runtime: Runtime, job: Job, outbox_id: int) -> None:
    try:
        async with runtime.pool.connection() as conn, conn.transaction():
            row = await outbox.lock(conn, outbox_id)
            if row is None or row.state in outbox.FINAL or (row.state == "pending" and not row.due):
                return
            # Settled first: the job may schedule the next unit of the same resource (a recurrence).
            await outbox.settle(conn, row.id, "done", count_attempt=True)
            await job(conn, runtime.settings, row)
    except (psycopg.OperationalError, Retry):
        raise
    except Exception as error:
        log.exception("outbox job %s failed", outbox_id)
        async with runtime.pool.connection() as conn, conn.transaction():
            row = await outbox.lock(conn, outbox_id)
            if row is not None:
                await dead_letter.record(conn, row, dead_letter.describe(error))
