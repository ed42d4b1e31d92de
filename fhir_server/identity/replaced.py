"""Merged-away (replaced) Patients: recorded by $merge, and no longer allowed as the target of new references.

A merge fixes the list of resources that reference its source, then rewrites them; a write that adds a
reference to the source and commits after the list was fixed would be missed. So the two serialize on a
transaction-scoped advisory lock keyed by the source: $merge takes it exclusively before it fixes the list,
and every write that references a Patient takes it in shared mode before it checks patient_replaced and
holds it until it commits. A write either commits first (and the merge, waiting for it, lists it) or checks
after the merge committed or was accepted for background work (and is refused). Writes of unrelated
Patients never wait for each other; only a merge waits, and only for writes naming its source.
"""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.identity.references import local_target, references
from fhir_server.storage.repository import HISTORICAL_TYPES



def referenced_patients(resource: dict[str, Any], base_url: str | None) -> set[str]:
    """Ids of the Patients `resource` references that must not be merged-away ones: none in the historical
    types, and not a Patient's own links (which record merges)."""
    ids: set[str] = set()
    if resource.get("resourceType") in HISTORICAL_TYPES:
        return ids
    for path, reference in references(resource):
        if resource.get("resourceType") == "Patient" and path[:1] == ("link",):
            continue
        target = local_target(reference["reference"], base_url)
        if target is not None and target[0] == "Patient":
            ids.add(target[1])
    return ids


# Sorted ids, locked in order, so that writes naming several Patients cannot deadlock one another.
_LOCK_SHARED = ("SELECT pg_advisory_xact_lock_shared(hashtextextended('Patient/' || patient_id, 0)) "
                "FROM unnest(%s::text[]) AS patient_id")


# The same, for the Patients given and those the current versions of the resources given reference.
_LOCK_SHARED_WITH_CURRENT = (
    "SELECT pg_advisory_xact_lock_shared(hashtextextended('Patient/' || patient_id, 0)) FROM ("
    "SELECT patient_id FROM unnest(%s::text[]) AS patient_id UNION SELECT sr.target_id FROM "
    "unnest(%s::text[], %s::text[]) AS w(resource_type, fhir_id) JOIN resource r ON r.resource_type = w.resource_type "
    "AND r.fhir_id = w.fhir_id JOIN search_reference sr ON sr.resource_id = r.id WHERE sr.target_type = 'Patient' "
    "AND sr.target_url IS NULL ORDER BY 1) AS patients(patient_id)")


async def lock_patients_first(conn: AsyncConnection, resources: list[Any], changed: list[tuple[str, str]],
                              base_url: str | None) -> None:
    """For a transaction, before any of its entries locks a row: the shared locks of every Patient that
    `resources` (its entries' bodies) reference, that it changes or deletes (`changed`, (type, id) pairs),
    or that the current versions of what it changes reference, in one statement.

    A merge takes its source's lock before it locks any row, so a transaction that touches the source or
    its referrers then waits for the merge (or the merge for it) holding no row: the two cannot deadlock."""
    patient_ids = set().union(*(referenced_patients(resource, base_url) for resource in resources
                                if isinstance(resource, dict) and "resourceType" in resource))
    patient_ids |= {fhir_id for resource_type, fhir_id in changed if resource_type == "Patient"}
    if not patient_ids and not changed:
        return
    types, ids = zip(*changed) if changed else ((), ())
    await conn.execute(_LOCK_SHARED_WITH_CURRENT, (sorted(patient_ids), list(types), list(ids)))


async def lock_for_merge(conn: AsyncConnection, source_id: str) -> None:
    """Wait for the writes that reference Patient/`source_id` to commit and keep new ones waiting until
    this transaction ends: then the referrers it lists are all there are."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('Patient/' || %s, 0))", (source_id,))


async def replacements(conn: AsyncConnection, patient_ids: list[str]) -> dict[str, str]:
    """For those of `patient_ids` that were merged away: source id → the id of the Patient that replaced it."""
    if not patient_ids:
        return {}
    rows = await (await conn.execute(
        "SELECT s.fhir_id, t.fhir_id FROM resource s JOIN patient_replaced p ON p.source = s.id "
        "JOIN resource t ON t.id = p.target WHERE s.resource_type = 'Patient' AND s.fhir_id = ANY(%s)",
        (patient_ids,))).fetchall()
    return {row[0]: row[1] for row in rows}


async def refuse_during_merge(conn: AsyncConnection, patient_ids: list[str], action: str) -> None:
    """409 if any of `patient_ids` is the source or the target of a merge that is still running in the
    background (its Task not yet completed or failed): the job needs both patients as they are."""
    row = await (await conn.execute(
        "SELECT p.fhir_id, t.fhir_id FROM patient_merge_job j JOIN resource t ON t.id = j.task "
        "JOIN resource p ON p.id IN (j.source, j.target) WHERE j.finished_at IS NULL "
        "AND p.resource_type = 'Patient' AND p.fhir_id = ANY(%s) LIMIT 1", (patient_ids,))).fetchone()
    if row is not None:
        raise FHIRError.of(409, "conflict", f"A merge of Patient/{row[0]} is in progress (Task/{row[1]}): it cannot "
                                            f"be {action} until that merge has completed or failed")


async def refuse_deleting_merge_task(conn: AsyncConnection, task_id: str) -> None:
    """409 for the Task of a merge still running in the background: the job reports through it, and without
    it would never end (its patients would stay closed)."""
    row = await (await conn.execute(
        "SELECT 1 FROM patient_merge_job j JOIN resource t ON t.id = j.task WHERE t.resource_type = 'Task' "
        "AND t.fhir_id = %s AND j.finished_at IS NULL", (task_id,))).fetchone()
    if row is not None:
        raise FHIRError.of(409, "conflict", f"Task/{task_id} reports a merge in progress: it cannot be deleted "
                                            "until that merge has completed or failed")


async def refuse_replaced_references(conn: AsyncConnection, resource: dict[str, Any], base_url: str | None) -> None:
    """422 if `resource` references a Patient that was merged into another (or is being merged); costs
    nothing without Patient references, else the shared lock and one indexed lookup. The caller must be in
    the transaction that writes `resource`, so that the lock lasts until it commits."""
    patient_ids = sorted(referenced_patients(resource, base_url))
    if not patient_ids:
        return
    await conn.execute(_LOCK_SHARED, (patient_ids,))
    found = await replacements(conn, patient_ids)
    if found:
        raise FHIRError(422, [
            Issue("business-rule", f"Patient/{source} was merged into Patient/{target}: reference Patient/{target} "
                                   "instead", expression=(resource.get("resourceType") or "Resource",))
            for source, target in sorted(found.items())
        ])
