"""Patient/$merge (the R5 operation, offered on R4): move everything from a source Patient to a target.

In the one database transaction of the request: every current resource that references the source, anywhere
in it (contained resources, extensions, choice types; Provenance and AuditEvent excepted, being records of the
past), is rewritten to reference the target, each as a new version; the source becomes inactive with a
`replaced-by` link; the target gets a `replaces` link and the source's identifiers (as `old`); a Provenance
lists every version written and the version it revises, which is what $unmerge works from.

Above `FHIR_MERGE_SYNC_LIMIT` referencing resources, or with `Prefer: respond-async`, the request only
accepts the merge: it fixes the list of referrers, creates a Task (status `requested`), marks the source as
replaced so that new references to it are refused at once, and leaves an outbox row for the worker, all in
its one transaction; it answers 202 with the Task's address. patient_merge_job.py does the rest.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from fhir_server import json_numbers
from fhir_server.auth.enforce import authorize_changes
from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.identity import merge_record, mrn, replaced
from fhir_server.identity.references import local_target, retarget
from fhir_server.operations import parameters as params
from fhir_server.operations.definitions import operation_definition
from fhir_server.operations.patient_lookup import patient_id
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.settings import get_settings
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredResource, instant
from fhir_server.validation import validate_resource
from fhir_server.worker import outbox

DEFINITION = operation_definition("Patient-merge")
TOPIC = "patient-merge"


def _links_to(patient: dict[str, Any], other_id: str, link_type: str | None = None) -> list[dict[str, Any]]:
    return [link for link in patient.get("link") or []
            if isinstance(link, dict) and local_target((link.get("other") or {}).get("reference") or "", None)
            == ("Patient", other_id) and (link_type is None or link.get("type") == link_type)]


def replaced_by(patient: dict[str, Any]) -> str | None:
    """The id of the Patient a `replaced-by` link names, if any."""
    for link in patient.get("link") or []:
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            target = local_target((link.get("other") or {}).get("reference") or "", None)
            if target is not None and target[0] == "Patient":
                return target[1]
    return None


def merged_source(source: dict[str, Any], target_id: str) -> dict[str, Any]:
    merged = dict(source)
    merged["active"] = False
    merged["link"] = [*(link for link in source.get("link") or [] if link not in _links_to(source, target_id)),
                      {"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"}]
    return merged


def merged_target(target: dict[str, Any], source: dict[str, Any], source_id: str) -> dict[str, Any]:
    """The target with a `replaces` link, and the source's identifiers it lacks, marked `old`."""
    merged = dict(target)
    present = {(identifier.get("system"), identifier.get("value")) for identifier in target.get("identifier") or []}
    copied = [{**identifier, "use": "old"} for identifier in source.get("identifier") or []
              if (identifier.get("system"), identifier.get("value")) not in present]
    if copied:
        merged["identifier"] = [*(target.get("identifier") or []), *copied]
    merged["link"] = [*(link for link in target.get("link") or [] if link not in _links_to(target, source_id)),
                      {"other": {"reference": f"Patient/{source_id}"}, "type": "replaces"}]
    return merged


def _result_patient(parameters: list[dict[str, Any]], target_id: str, source_id: str) -> dict[str, Any] | None:
    found = params.one(parameters, "result-patient")
    if found is None:
        return None
    patient = found.get("resource")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise FHIRError.of(400, "invalid", "result-patient must be a Patient resource", "result-patient")
    if patient.get("id") != target_id:
        raise FHIRError.of(422, "invalid", f"result-patient must have the target's id '{target_id}'", "result-patient")
    if not _links_to(patient, source_id, "replaces"):
        raise FHIRError.of(422, "invalid", f"result-patient must have a link of type replaces to Patient/{source_id}",
                           "result-patient")
    issues = validate_resource(patient, "Patient")
    if issues:
        raise FHIRError(422, issues)
    return patient


async def _current(conn: AsyncConnection, fhir_id: str, role: str, lock: bool) -> StoredResource:
    stored = await repository.read(conn, "Patient", fhir_id, for_update=lock)
    if stored is None or stored.deleted:
        raise FHIRError.of(422, "not-found", f"The {role} Patient/{fhir_id} does not exist", f"{role}-patient")
    return stored


@dataclass(frozen=True, slots=True)
class Referrer:
    pk: int
    resource_type: str
    fhir_id: str


async def referrers(conn: AsyncConnection, patient_id_: str) -> list[Referrer]:
    """Every current resource that references Patient/`patient_id_`, in row order: the list a merge fixes
    before it rewrites anything. Left out: the Patient itself, the historical types, and the Tasks of merges
    (records of a merge, like its Provenance)."""
    rows = await (await conn.execute(
        "SELECT r.id, r.resource_type, r.fhir_id FROM resource r WHERE r.id IN (SELECT sr.resource_id "
        "FROM search_reference sr WHERE sr.target_type = 'Patient' AND sr.target_id = %s AND sr.target_url IS NULL) "
        "AND NOT r.deleted AND r.resource_type <> ALL(%s) AND NOT (r.resource_type = 'Patient' AND r.fhir_id = %s) "
        "AND r.id NOT IN (SELECT task FROM patient_merge_job) ORDER BY r.id",
        (patient_id_, sorted(replaced.HISTORICAL_TYPES), patient_id_))).fetchall()
    return [Referrer(*row) for row in rows]


def by_type(patient_ids: list[str], found: list[Referrer]) -> dict[str, list[str]]:
    """The ids a merge would change, by type: both patients and the referrers (what it must be allowed to)."""
    changed: dict[str, list[str]] = {"Patient": list(patient_ids)}
    for referrer in found:
        changed.setdefault(referrer.resource_type, []).append(referrer.fhir_id)
    return changed


async def current_rows(conn: AsyncConnection, ids: list[int], lock: bool) -> list[StoredResource]:
    """The current versions of the resources with row ids `ids`, in row order, less any deleted meanwhile;
    locked for a rewrite, in that order (the order every merge locks in, so merges never deadlock)."""
    rows = await (await conn.execute(
        "SELECT id, resource_type, fhir_id, version_id, last_updated, deleted, content FROM resource "
        "WHERE id = ANY(%s) AND NOT deleted ORDER BY id" + (" FOR UPDATE" if lock else ""), (ids,))).fetchall()
    return [StoredResource(*row) for row in rows]


async def limit_lock_waits(conn: AsyncConnection, seconds: float) -> None:
    """A merge gives up (LockNotAvailable) rather than wait longer than `seconds` for a row or lock held by
    another transaction: it holds its source's lock meanwhile, and every write naming the source waits on it."""
    await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(seconds * 1000)}ms",))


def outcome_of(summary: str, counts: Counter, references: int, severity: str = "information") -> dict[str, Any]:
    issues = [Issue("informational", summary, severity=severity)]
    issues += [Issue("informational", f"{kind}: {count} resource(s), references rewritten", severity=severity)
               for kind, count in sorted(counts.items())]
    issues.append(Issue("informational", f"{sum(counts.values())} resource(s) and {references} reference(s) "
                                         "changed in all", severity=severity))
    return operation_outcome(issues)


def rewrite(referrer: StoredResource, source_id: str, target_id: str, base_url: str | None
            ) -> tuple[dict[str, Any], int]:
    """`referrer` as it reads with its references to the source pointing at the target, and how many."""
    resource = referrer.json()
    return resource, retarget(resource, ("Patient", source_id), ("Patient", target_id), base_url)


async def record_merge(conn: AsyncConnection, source: StoredResource, target: StoredResource,
                       new_target: dict[str, Any], changes: list[merge_record.Change], base_url: str | None
                       ) -> tuple[dict[str, Any], StoredResource]:
    """The last step of every merge, once the referrers are rewritten (`changes`): both patients, the
    Provenance, and the patient_replaced row. Returns the target as written and the Provenance."""
    for stored, content in ((source, merged_source(source.json(), target.fhir_id)), (target, new_target)):
        written, _ = await repository.update(conn, content, stored.fhir_id, base_url=base_url)
        changes.append(("Patient", stored.fhir_id, stored.version_id, written.version_id))
        if stored is target:
            result = written.json()
    record = await repository.create(conn, merge_record.provenance("merge", changes, datetime.now(timezone.utc)),
                                     base_url=base_url)
    await conn.execute("INSERT INTO patient_replaced (source, target, provenance) VALUES (%s, %s, %s) "
                       "ON CONFLICT (source) DO UPDATE SET provenance = excluded.provenance",
                       (source.pk, target.pk, record.pk))
    return result, record


async def merge(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    parameters = params.parameter_list(req)
    source_id = await patient_id(conn, parameters, "source-patient", req.base_url)
    target_id = await patient_id(conn, parameters, "target-patient", req.base_url)
    preview = params.boolean(req, parameters, "preview")
    if source_id == target_id:
        raise FHIRError.of(422, "business-rule", f"Patient/{source_id} cannot be merged into itself")
    result_patient = _result_patient(parameters, target_id, source_id)
    settings = get_settings()
    if not preview:
        await limit_lock_waits(conn, settings.merge_lock_timeout)
        await replaced.lock_for_merge(conn, source_id)  # before any row lock: writers never wait on ours
    # Lock in id order, so two merges of the same pair cannot deadlock.
    stored = {fhir_id: await _current(conn, fhir_id, role, not preview)
              for fhir_id, role in sorted([(source_id, "source"), (target_id, "target")])}
    await replaced.refuse_during_merge(conn, [source_id, target_id], "merged")
    source, target = stored[source_id].json(), stored[target_id].json()
    already = replaced_by(source) or (await replaced.replacements(conn, [source_id])).get(source_id)
    if already:
        raise FHIRError.of(422, "business-rule", f"Patient/{source_id} was already merged into Patient/{already}")
    if replaced_by(target) or (await replaced.replacements(conn, [target_id])):
        raise FHIRError.of(422, "business-rule", f"The target Patient/{target_id} was itself merged into another "
                                                 "Patient; merge into that one")
    if target.get("active") is False:
        raise FHIRError.of(422, "business-rule", f"The target Patient/{target_id} is inactive")

    new_target = result_patient or merged_target(target, source, source_id)
    await mrn.ensure_mrn(conn, new_target, target_id)  # a result-patient without the MRN keeps the target's
    found = await referrers(conn, source_id)
    await authorize_changes(conn, req.principal, "r" if preview else "u", by_type([source_id, target_id], found),
                            "read for the preview" if preview else "rewrite")
    ids = [referrer.pk for referrer in found]
    if not preview and (len(ids) > settings.merge_sync_limit or req.prefer("respond-async") is not None):
        return await _accept(conn, req, parameters, stored[source_id], stored[target_id], result_patient, ids)
    counts: Counter = Counter()
    references = 0
    changes: list[merge_record.Change] = []
    for referrer in await current_rows(conn, ids, lock=not preview):
        resource, rewritten = rewrite(referrer, source_id, target_id, req.base_url)
        if not rewritten:
            continue
        counts[referrer.resource_type] += 1
        references += rewritten
        if not preview:
            written, _ = await repository.update(conn, resource, referrer.fhir_id, base_url=req.base_url)
            changes.append((referrer.resource_type, referrer.fhir_id, referrer.version_id, written.version_id))

    if preview:
        result = {**new_target, "id": target_id, "meta": target.get("meta")}
        outcome = outcome_of(f"Preview: merging Patient/{source_id} into Patient/{target_id} would change:",
                             counts, references)
    else:
        result, record = await record_merge(conn, stored[source_id], stored[target_id], new_target, changes,
                                            req.base_url)
        outcome = outcome_of(f"Merged Patient/{source_id} into Patient/{target_id}; Provenance/{record.fhir_id} "
                             "records it", counts, references)
    body = params.parameters_resource([
        {"name": "input", "resource": req.body},
        {"name": "outcome", "resource": outcome},
        {"name": "result", "resource": result},
    ])
    return Outcome(200, json_numbers.dumps(body))


def _task(parameters: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """The Task of an accepted merge: its `input` the merge's parameters (a resource among them contained)."""
    inputs, contained = [], []
    for part in parameters:
        if isinstance(part.get("resource"), dict):
            contained.append({**part["resource"], "id": part["name"]})
            value = {"valueReference": {"reference": f"#{part['name']}"}}
        else:
            value = {key: item for key, item in part.items() if key.startswith("value")}
        if value:
            inputs.append({"type": {"text": part["name"]}, **value})
    now = instant(datetime.now(timezone.utc))
    task = {"resourceType": "Task", "status": "requested", "intent": "order", "instantiatesUri": DEFINITION.url,
            "code": {"text": "Patient/$merge"}, "businessStatus": {"text": progress_text(0, total)},
            "authoredOn": now, "lastModified": now, "input": inputs}
    if contained:
        task["contained"] = contained
    return task


def progress_text(done: int, total: int) -> str:
    return f"rewritten {done} of {total} referencing resources"


async def _accept(conn: AsyncConnection, req: FHIRRequest, parameters: list[dict[str, Any]],
                  source: StoredResource, target: StoredResource, result_patient: dict[str, Any] | None,
                  ids: list[int]) -> Outcome:
    """202: the Task, the job with its fixed list of referrers, the source marked as replaced, the outbox row."""
    task = await repository.create(conn, _task(parameters, len(ids)), base_url=req.base_url)
    await conn.execute(
        "INSERT INTO patient_merge_job (task, source, target, base_url, result_patient, total) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (task.pk, source.pk, target.pk, req.base_url, json_numbers.dumps(result_patient).decode()
         if result_patient is not None else None, len(ids)))
    await conn.execute(
        "INSERT INTO patient_merge_referrer (task, position, resource_id) "
        "SELECT %s, position - 1, resource_id FROM unnest(%s::bigint[]) WITH ORDINALITY AS r(resource_id, position)",
        (task.pk, ids))
    await conn.execute("INSERT INTO patient_replaced (source, target) VALUES (%s, %s)", (source.pk, target.pk))
    await outbox.schedule(conn, TOPIC, "Task", task.fhir_id, targets=[""], added=[""],
                          due_at=datetime.now(timezone.utc), priority=3)
    location = f"{req.base_url}/Task/{task.fhir_id}"
    outcome = operation_outcome([Issue("informational", f"Accepted: merging Patient/{source.fhir_id} into "
                                       f"Patient/{target.fhir_id} rewrites {len(ids)} referencing resource(s) in "
                                       f"the background; Task/{task.fhir_id} reports its progress",
                                       severity="information")])
    body = params.parameters_resource([
        {"name": "input", "resource": req.body},
        {"name": "outcome", "resource": outcome},
        {"name": "task", "resource": task.json()},
    ])
    return Outcome(202, json_numbers.dumps(body), location=location, headers={"Content-Location": location})
