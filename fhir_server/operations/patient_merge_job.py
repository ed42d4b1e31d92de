"""The background half of a large Patient/$merge: the `patient-merge` outbox job, one batch per message.

Each message does one batch in one transaction: it locks its outbox row and the job, rewrites the next
`merge_sync_limit` resources of the list fixed when the merge was accepted (each read as it is now), moves
the job's `done` past them, brings the Task up to date (`in-progress`, "rewritten n of N"), settles its row
and leaves the row of the next batch. The batch that reaches the end of the list also completes the merge
(both patients, the Provenance, the Task `completed` with its output). A redelivered message finds its row
settled and does nothing; a batch interrupted before its commit leaves nothing behind and is done again,
from the same position, when the message is retried or redelivered.

A batch that meets a resource held by another transaction (past `merge_lock_timeout`, or a deadlock) is
tried again later, with growing delays. A merge that cannot complete (that, `merge_max_attempts` times for
one batch, or any other error but the database being unreachable) is undone, so that it changes nothing:
the job records the failure, and its batches from then on restore the references they had rewritten,
last first, each as a new version, before the Task fails with the error and Provenances of the rewrites and
of their undoing. The source is then no longer marked as replaced, and $merge can run again.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg

from fhir_server import json_numbers
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.identity import merge_record, mrn, replaced
from fhir_server.identity.references import restore_references
from fhir_server.operations.patient_merge import (TOPIC, current_rows, limit_lock_waits, merged_target, outcome_of,
                                                  progress_text, record_merge, rewrite)
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.storage.database import ROLLED_BACK
from fhir_server.storage.repository import StoredResource, instant
from fhir_server.worker import outbox
from fhir_server.worker.runtime import Runtime

log = logging.getLogger(__name__)

# Another transaction held a row past the lock timeout, or PostgreSQL broke a deadlock by aborting the batch.
CONTENTION = (psycopg.errors.LockNotAvailable, *ROLLED_BACK)


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
    failure: list[dict[str, Any]] | None
    """The OperationOutcome issues of the error that failed the merge; set while it is being undone."""


def perform(runtime: Runtime, outbox_id: int) -> None:
    """The `patient-merge` actor: runs in a worker thread; the work runs on the runtime's event loop."""
    runtime.run(_perform(runtime, outbox_id))


async def _perform(runtime: Runtime, outbox_id: int) -> None:
    settings = runtime.settings
    try:
        async with runtime.pool.connection() as conn, conn.transaction():
            await limit_lock_waits(conn, settings.merge_lock_timeout)
            await step(conn, settings, outbox_id)
    except CONTENTION as error:
        async with runtime.pool.connection() as conn, conn.transaction():
            await _contended(conn, settings, outbox_id, error)
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
        "SELECT source, target, base_url, result_patient::text, total, done, finished_at IS NOT NULL, failure "
        "FROM patient_merge_job WHERE task = %s FOR UPDATE", (task.pk,))).fetchone()
    if row is None:
        return None
    # As text, so that its decimals keep their written precision (jsonb keeps it; a float would not).
    source, target, base_url, result_patient, *rest = row
    return Job(task, source, target, base_url, json_numbers.loads(result_patient.encode()) if result_patient else None,
               *rest)


async def _patients(conn: AsyncConnection, job: Job) -> tuple[StoredResource, StoredResource]:
    """The source and the target, locked as a synchronous merge locks them: the source's merge lock first
    (transactions touching its referrers take it too, before their rows), then both rows in id order."""
    rows = await (await conn.execute("SELECT id, fhir_id FROM resource WHERE id IN (%s, %s)",
                                     (job.source_pk, job.target_pk))).fetchall()
    fhir_ids = dict(rows)
    await replaced.lock_for_merge(conn, fhir_ids[job.source_pk])
    stored = {}
    for fhir_id in sorted(fhir_ids.values()):
        stored[fhir_id] = await repository.read(conn, "Patient", fhir_id, for_update=True)
        assert stored[fhir_id] is not None
    return stored[fhir_ids[job.source_pk]], stored[fhir_ids[job.target_pk]]


async def step(conn: AsyncConnection, settings: Settings, outbox_id: int) -> None:
    """One message's work: the next batch, and the completion if that was the last one; or, once the
    merge has failed, the next batch of its undo, and the end of the failure if that was the last one."""
    row = await outbox.lock(conn, outbox_id)
    if row is None or row.state in outbox.FINAL or (row.state == "pending" and not row.due):
        return  # redelivered, or rescheduled meanwhile
    # Settled first: the next batch's row may only be added once this one is no longer live.
    await outbox.settle(conn, row.id, "done", count_attempt=True)
    job = await _job(conn, row.fhir_id)
    if job is None or job.finished:
        return
    source, target = await _patients(conn, job)
    size = max(1, settings.merge_sync_limit)
    if job.failure is not None:
        job.done -= await _undo_batch(conn, job, source.fhir_id, target.fhir_id, size)
        if job.done > 0:
            await _update_task(conn, job, "in-progress", undo_text(job))
            await _next(conn, job)
        else:
            await _finish_failed(conn, job)
        return
    for patient in (source, target):
        if patient.deleted:  # deletes are refused while the merge runs (identity.after_delete)
            raise FHIRError.of(422, "business-rule", f"Patient/{patient.fhir_id} was deleted while the merge was "
                                                     "in progress")
    if job.done < job.total:
        job.done += await _batch(conn, job, source.fhir_id, target.fhir_id, size)
    if job.done < job.total:
        await _update_task(conn, job, "in-progress", progress_text(job.done, job.total))
        await _next(conn, job)
    else:
        await _complete(conn, job, source, target)


async def _next(conn: AsyncConnection, job: Job) -> None:
    await outbox.schedule(conn, TOPIC, "Task", job.task.fhir_id, targets=[""], added=[""],
                          due_at=datetime.now(timezone.utc), priority=3)


async def _batch(conn: AsyncConnection, job: Job, source_id: str, target_id: str, size: int) -> int:
    """Rewrite the next `size` resources of the list from position `done`; returns how many were taken.
    A resource deleted since the list was fixed is passed over."""
    items = await (await conn.execute(
        "SELECT position, resource_id FROM patient_merge_referrer WHERE task = %s AND position >= %s "
        "ORDER BY position LIMIT %s", (job.task.pk, job.done, size))).fetchall()
    current = {stored.pk: stored for stored in await current_rows(conn, [pk for _, pk in items], lock=True)}
    recorded = []
    for position, pk in items:
        referrer = current.get(pk)
        if referrer is None:
            recorded.append((None, None, 0, job.task.pk, position))
            continue
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


async def _undo_batch(conn: AsyncConnection, job: Job, source_id: str, target_id: str, size: int) -> int:
    """Restore the references the batches rewrote at the `size` positions before `done` (each resource as it
    is now, changes made since kept); returns how many positions that covers."""
    first = max(0, job.done - size)
    items = await (await conn.execute(
        "SELECT i.position, i.resource_id, v.content FROM patient_merge_referrer i JOIN resource_version v "
        "ON v.resource_id = i.resource_id AND v.version_id = i.version_before WHERE i.task = %s "
        "AND i.position >= %s AND i.position < %s AND i.version_after IS NOT NULL ORDER BY i.position",
        (job.task.pk, first, job.done))).fetchall()
    current = {stored.pk: stored for stored in await current_rows(conn, [pk for _, pk, _ in items], lock=True)}
    recorded = []
    for position, pk, prior in items:
        referrer = current.get(pk)
        if referrer is None:
            continue  # deleted since: nothing references the target any more
        resource = referrer.json()
        if restore_references(json_numbers.loads(prior), resource, source_id, target_id, job.base_url):
            written, _ = await repository.update(conn, resource, referrer.fhir_id, base_url=job.base_url)
            recorded.append((referrer.version_id, written.version_id, job.task.pk, position))
    async with conn.cursor() as cursor:
        await cursor.executemany("UPDATE patient_merge_referrer SET undo_before = %s, undo_after = %s "
                                 "WHERE task = %s AND position = %s", recorded)
    await conn.execute("UPDATE patient_merge_job SET done = %s WHERE task = %s", (first, job.task.pk))
    return job.done - first


async def _changes(conn: AsyncConnection, job: Job, undo: bool = False
                   ) -> tuple[list[merge_record.Change], Counter, int]:
    """What the batches changed (or, with `undo`, what undoing them changed): the Provenance's changes,
    counts by type, and references in all."""
    before, after = ("i.undo_before", "i.undo_after") if undo else ("i.version_before", "i.version_after")
    rows = await (await conn.execute(
        f"SELECT r.resource_type, r.fhir_id, {before}, {after}, i.rewritten "
        "FROM patient_merge_referrer i JOIN resource r ON r.id = i.resource_id "
        f"WHERE i.task = %s AND {after} IS NOT NULL ORDER BY i.position", (job.task.pk,))).fetchall()
    counts = Counter(row[0] for row in rows)
    return [(kind, fhir_id, before, after) for kind, fhir_id, before, after, _ in rows], counts, \
        sum(row[4] for row in rows)


async def _complete(conn: AsyncConnection, job: Job, source: StoredResource, target: StoredResource) -> None:
    changes, counts, references = await _changes(conn, job)
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


def undo_text(job: Job) -> str:
    return f"failed; undoing: {job.done} of {job.total} referencing resources left to restore"


async def _contended(conn: AsyncConnection, settings: Settings, outbox_id: int, error: Exception) -> None:
    """The batch met a resource another transaction held: it is tried again after a growing delay. A merge
    gives up (and is undone) after `merge_max_attempts` tries of one batch; an undo never gives up."""
    row = await outbox.lock(conn, outbox_id)
    if row is None or row.state in outbox.FINAL:
        return
    job = await _job(conn, row.fhir_id)
    if job is not None and not job.finished and job.failure is None \
            and row.attempts + 1 >= settings.merge_max_attempts:
        await outbox.settle(conn, row.id, "dead", error=f"{type(error).__name__}: {error}"[:1000],
                            count_attempt=True)
        await _start_undo(conn, job, [Issue("lock-error", f"Resources the merge must rewrite stayed locked by other "
                                                          f"transactions through {row.attempts + 1} attempts "
                                                          f"({str(error).strip()})")])
        return
    delay = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** row.attempts)
    await outbox.settle(conn, row.id, "pending", error=f"{type(error).__name__}: {error}"[:1000], retry_in=delay,
                        count_attempt=True)


async def _fail(conn: AsyncConnection, outbox_id: int, error: Exception) -> None:
    """Dead-letter the message and undo the merge (an error while undoing leaves the Task in progress, for
    the operator: the server log has it)."""
    row = await outbox.lock(conn, outbox_id)
    if row is None:
        return
    await outbox.settle(conn, row.id, "dead", error=f"{type(error).__name__}: {error}"[:1000], count_attempt=True)
    job = await _job(conn, row.fhir_id)
    if job is None or job.finished or job.failure is not None:
        return
    await _start_undo(conn, job, error.issues if isinstance(error, FHIRError) else [
        Issue("exception", "The merge failed on an internal error; the server log has the details")])


async def _start_undo(conn: AsyncConnection, job: Job, issues: list[Issue]) -> None:
    job.failure = [issue.to_json() for issue in issues]
    await conn.execute("UPDATE patient_merge_job SET failure = %s WHERE task = %s",
                       (orjson.dumps(job.failure).decode(), job.task.pk))
    if job.done == 0:
        await _finish_failed(conn, job)
        return
    await _update_task(conn, job, "in-progress", undo_text(job))
    await _next(conn, job)


async def _finish_failed(conn: AsyncConnection, job: Job) -> None:
    """The end of a failed merge, its rewrites all undone: the Task fails with the error; Provenances record
    the rewrites and their undoing; the source is open to references (and merges) again."""
    changes, _, _ = await _changes(conn, job)
    restored, _, _ = await _changes(conn, job, undo=True)
    now = datetime.now(timezone.utc)
    linked = []
    summary = "Nothing was rewritten"
    if changes:
        merged = await repository.create(conn, merge_record.provenance("merge", changes, now), base_url=job.base_url)
        linked.append(("provenance", f"Provenance/{merged.fhir_id}"))
        summary = (f"{len(changes)} of {job.total} referencing resource(s) had been rewritten (Provenance/"
                   f"{merged.fhir_id}); the references to the source were put back in {len(restored)} of them")
        if restored:
            undone = await repository.create(conn, merge_record.provenance("unmerge", restored, now,
                                                                           [f"Provenance/{merged.fhir_id}"]),
                                             base_url=job.base_url)
            linked.append(("provenance", f"Provenance/{undone.fhir_id}"))
            summary += f" (Provenance/{undone.fhir_id})"
        summary += " and the others no longer existed or referenced the target" if len(restored) < len(changes) else ""
    summary += ("; the merge changed nothing else, the source is no longer marked as replaced, and $merge can "
                "be run again")
    outcome = {"resourceType": "OperationOutcome",
               "issue": [*job.failure, Issue("informational", summary, severity="information").to_json()]}
    await conn.execute("DELETE FROM patient_replaced WHERE source = %s AND provenance IS NULL", (job.source_pk,))
    await _update_task(conn, job, "failed", "failed; undone", outcome, linked)
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
