"""The background half of a large Patient/$merge: the `patient-merge` outbox job, one batch per message.

Each message does one batch in one transaction: it locks its outbox row and the job, rewrites the next
`merge_sync_limit` resources of the list fixed when the merge was accepted (each read as it is now), moves
the job's `done` past them, brings the Task up to date (`in-progress`, "rewritten n of N"), settles its row
and leaves the row of the next batch. The batch that reaches the end of the list also completes the merge
(both patients, the Provenance, the Task `completed` with its output). A redelivered message finds its row
settled and does nothing; a batch interrupted before its commit leaves nothing behind and is done again,
from the same position, when the message is retried or redelivered.

A merge that cannot complete (any error but the database being unreachable, e.g. the target was deleted
meanwhile) fails its Task with an OperationOutcome. The resources already rewritten keep referencing the
target and a Provenance lists them; the source is no longer marked as replaced, so $merge can run again.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.identity import merge_record, mrn
from fhir_server.operations.patient_merge import (TOPIC, current_rows, merged_target, outcome_of, progress_text,
                                                  record_merge, rewrite)
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredResource, instant
from fhir_server.worker import outbox
from fhir_server.worker.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    task: StoredResource
    source_pk: int
    target_pk: int
    base_url: str | None
    result_patient: dict[str, Any] | None
    total: int
    done: int
    finished: bool


def perform(runtime: Runtime, outbox_id: int) -> None:
    """The `patient-merge` actor: runs in a worker thread; the work runs on the runtime's event loop."""
    runtime.run(_perform(runtime, outbox_id))


async def _perform(runtime: Runtime, outbox_id: int) -> None:
    try:
        async with runtime.pool.connection() as conn, conn.transaction():
            await step(conn, runtime.settings, outbox_id)
    except psycopg.OperationalError:
        raise  # the database was away: Dramatiq retries, and the batch starts over where it was
    except Exception as error:
        if not isinstance(error, FHIRError):
            log.exception("patient merge (outbox row %s) failed", outbox_id)
        async with runtime.pool.connection() as conn, conn.transaction():
            await _fail(conn, outbox_id, error)


async def _job(conn: AsyncConnection, task_id: str) -> Job | None:
    """The job of Task/`task_id` and its Task, both locked until the transaction ends."""
    task = await repository.read(conn, "Task", task_id, for_update=True)
    if task is None:
        return None
    row = await (await conn.execute(
        "SELECT source, target, base_url, result_patient, total, done, finished_at IS NOT NULL "
        "FROM patient_merge_job WHERE task = %s FOR UPDATE", (task.pk,))).fetchone()
    return Job(task, *row) if row else None


async def _patient(conn: AsyncConnection, pk: int) -> StoredResource:
    fhir_id = (await (await conn.execute("SELECT fhir_id FROM resource WHERE id = %s", (pk,))).fetchone())[0]
    stored = await repository.read(conn, "Patient", fhir_id, for_update=True)
    assert stored is not None
    return stored


async def step(conn: AsyncConnection, settings: Settings, outbox_id: int) -> None:
    """One message's work: the next batch, and the completion if that was the last one."""
    row = await outbox.lock(conn, outbox_id)
    if row is None or row.state in outbox.FINAL or (row.state == "pending" and not row.due):
        return  # redelivered, or rescheduled meanwhile
    # Settled first: the next batch's row may only be added once this one is no longer live.
    await outbox.settle(conn, row.id, "done", count_attempt=True)
    job = await _job(conn, row.fhir_id)
    if job is None or job.finished:
        return
    source, target = await _patient(conn, job.source_pk), await _patient(conn, job.target_pk)
    if target.deleted:
        raise FHIRError.of(422, "business-rule", f"The target Patient/{target.fhir_id} was deleted while the "
                                                 "merge was in progress")
    if job.done < job.total:
        job.done += await _batch(conn, job, source.fhir_id, target.fhir_id, max(1, settings.merge_sync_limit))
    if job.done < job.total:
        await _update_task(conn, job, "in-progress", progress_text(job.done, job.total))
        await outbox.schedule(conn, TOPIC, "Task", job.task.fhir_id, targets=[""], added=[""],
                              due_at=datetime.now(timezone.utc), priority=3)
    else:
        await _complete(conn, job, source, target)


async def _batch(conn: AsyncConnection, job: Job, source_id: str, target_id: str, size: int) -> int:
    """Rewrite the next `size` resources of the list from position `done`; returns how many were taken."""
    items = await (await conn.execute(
        "SELECT position, resource_id FROM patient_merge_referrer WHERE task = %s AND position >= %s "
        "ORDER BY position LIMIT %s", (job.task.pk, job.done, size))).fetchall()
    current = {stored.pk: stored for stored in await current_rows(conn, [pk for _, pk in items], lock=True)}
    recorded = []
    for position, pk in items:
        referrer = current[pk]
        resource, rewritten = rewrite(referrer, source_id, target_id, job.base_url)
        after = None
        if rewritten:
            written, _ = await repository.update(conn, resource, referrer.fhir_id, base_url=job.base_url)
            after = written.version_id
        recorded.append((referrer.version_id, after, rewritten, job.task.pk, position))
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "UPDATE patient_merge_referrer SET version_before = %s, version_after = %s, rewritten = %s "
            "WHERE task = %s AND position = %s", recorded)
    await conn.execute("UPDATE patient_merge_job SET done = done + %s WHERE task = %s", (len(items), job.task.pk))
    return len(items)


async def _rewritten(conn: AsyncConnection, job: Job) -> tuple[list[merge_record.Change], Counter, int]:
    """What the batches so far changed: the Provenance's changes, counts by type, references in all."""
    rows = await (await conn.execute(
        "SELECT r.resource_type, r.fhir_id, i.version_before, i.version_after, i.rewritten "
        "FROM patient_merge_referrer i JOIN resource r ON r.id = i.resource_id "
        "WHERE i.task = %s AND i.version_after IS NOT NULL ORDER BY i.position", (job.task.pk,))).fetchall()
    counts = Counter(row[0] for row in rows)
    return [(kind, fhir_id, before, after) for kind, fhir_id, before, after, _ in rows], counts, \
        sum(row[4] for row in rows)


async def _complete(conn: AsyncConnection, job: Job, source: StoredResource, target: StoredResource) -> None:
    if source.deleted:
        raise FHIRError.of(422, "business-rule", f"The source Patient/{source.fhir_id} was deleted while the "
                                                 "merge was in progress")
    changes, counts, references = await _rewritten(conn, job)
    new_target = job.result_patient or merged_target(target.json(), source.json(), source.fhir_id)
    await mrn.ensure_mrn(conn, new_target, target.fhir_id)
    result, record = await record_merge(conn, source, target, new_target, changes, job.base_url)
    outcome = outcome_of(f"Merged Patient/{source.fhir_id} into Patient/{target.fhir_id}; "
                         f"Provenance/{record.fhir_id} records it", counts, references)
    await _update_task(conn, job, "completed", progress_text(job.total, job.total), outcome, [
        ("result", f"Patient/{target.fhir_id}/_history/{result['meta']['versionId']}"),
        ("provenance", f"Provenance/{record.fhir_id}"),
    ])
    await conn.execute("UPDATE patient_merge_job SET finished_at = now() WHERE task = %s", (job.task.pk,))


async def _fail(conn: AsyncConnection, outbox_id: int, error: Exception) -> None:
    """Fail the Task with an OperationOutcome; what was rewritten stays, with a Provenance listing it."""
    row = await outbox.lock(conn, outbox_id)
    if row is None:
        return
    await outbox.settle(conn, row.id, "dead", error=f"{type(error).__name__}: {error}"[:1000], count_attempt=True)
    job = await _job(conn, row.fhir_id)
    if job is None or job.finished:
        return
    issues = error.issues if isinstance(error, FHIRError) else [
        Issue("exception", "The merge failed on an internal error; the server log has the details")]
    changes, _, _ = await _rewritten(conn, job)
    linked = []
    summary = f"{len(changes)} of {job.total} referencing resource(s) had been rewritten to reference the target"
    if changes:
        record = await repository.create(conn, merge_record.provenance("merge", changes, datetime.now(timezone.utc)),
                                         base_url=job.base_url)
        linked.append(("provenance", f"Provenance/{record.fhir_id}"))
        summary += f" (Provenance/{record.fhir_id} lists them)"
    issues = [*issues, Issue("informational", summary + "; the source is no longer marked as replaced, and "
                                              "$merge can be run again to finish", severity="information")]
    await conn.execute("DELETE FROM patient_replaced WHERE source = %s AND provenance IS NULL", (job.source_pk,))
    await _update_task(conn, job, "failed", progress_text(job.done, job.total) + "; failed",
                       operation_outcome(issues), linked)
    await conn.execute("UPDATE patient_merge_job SET finished_at = now() WHERE task = %s", (job.task.pk,))


async def _update_task(conn: AsyncConnection, job: Job, status: str, business_status: str,
                       outcome: dict[str, Any] | None = None, linked: list[tuple[str, str]] = ()) -> None:
    """A new version of the Task: its status and progress; at the end its output, the OperationOutcome
    (contained) first, then references to what the merge wrote."""
    task = job.task.json()
    task.update(status=status, businessStatus={"text": business_status},
                lastModified=instant(datetime.now(timezone.utc)))
    if outcome is not None:
        task["contained"] = [*(task.get("contained") or []), {**outcome, "id": "outcome"}]
        task["output"] = [{"type": {"text": "outcome"}, "valueReference": {"reference": "#outcome"}},
                          *({"type": {"text": name}, "valueReference": {"reference": reference}}
                            for name, reference in linked)]
    written, _ = await repository.update(conn, task, job.task.fhir_id, base_url=job.base_url)
    job.task = written
