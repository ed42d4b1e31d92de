"""Patient/$merge (the R5 operation, offered on R4): move everything from a source Patient to a target.

In the one database transaction of the request: every current resource that references the source, anywhere
in it (contained resources, extensions, choice types; Provenance and AuditEvent excepted, being records of the
past), is rewritten to reference the target, each as a new version; the source becomes inactive with a
`replaced-by` link; the target gets a `replaces` link and the source's identifiers (as `old`); a Provenance
lists every version written and the version it revises, which is what $unmerge works from.

Merges run synchronously whatever their size. TODO (issue 5, async part): above a size limit, answer 202 with
a Task that a worker completes.
"""

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.identity import merge_record, mrn, replaced
from fhir_server.identity.references import local_target, retarget
from fhir_server.operations import parameters as params
from fhir_server.operations.definitions import canonical
from fhir_server.operations.patient_lookup import patient_id
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredResource
from fhir_server.validation import validate_resource

NAME = "merge"
DEFINITION = canonical("Patient-merge")
RESOURCE_TYPES = ("Patient",)


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


def _merged_source(source: dict[str, Any], target_id: str) -> dict[str, Any]:
    merged = dict(source)
    merged["active"] = False
    merged["link"] = [*(link for link in source.get("link") or [] if link not in _links_to(source, target_id)),
                      {"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"}]
    return merged


def _merged_target(target: dict[str, Any], source: dict[str, Any], source_id: str) -> dict[str, Any]:
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


async def referrers(conn: AsyncConnection, patient_id_: str, lock: bool) -> list[StoredResource]:
    """Every current resource that references Patient/`patient_id_` (other than itself and the historical
    types), fixed once, in row order, and locked for the rewrite unless only previewing."""
    rows = await (await conn.execute(
        "SELECT r.id, r.resource_type, r.fhir_id, r.version_id, r.last_updated, r.content FROM resource r "
        "WHERE r.id IN (SELECT sr.resource_id FROM search_reference sr WHERE sr.target_type = 'Patient' "
        "AND sr.target_id = %s AND sr.target_url IS NULL) AND NOT r.deleted AND r.resource_type <> ALL(%s) "
        "AND NOT (r.resource_type = 'Patient' AND r.fhir_id = %s) ORDER BY r.id" + (" FOR UPDATE" if lock else ""),
        (patient_id_, sorted(replaced.HISTORICAL_TYPES), patient_id_))).fetchall()
    return [StoredResource(row[0], row[1], row[2], row[3], row[4], False, row[5]) for row in rows]


def outcome_of(summary: str, counts: Counter, references: int, severity: str = "information") -> dict[str, Any]:
    issues = [Issue("informational", summary, severity=severity)]
    issues += [Issue("informational", f"{kind}: {count} resource(s), references rewritten", severity=severity)
               for kind, count in sorted(counts.items())]
    issues.append(Issue("informational", f"{sum(counts.values())} resource(s) and {references} reference(s) "
                                         "changed in all", severity=severity))
    return operation_outcome(issues)


async def merge(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    if req.resource_type != "Patient" or req.id is not None:
        raise FHIRError.of(404, "not-supported", "$merge is supported as POST Patient/$merge")
    if req.method != "POST":
        raise FHIRError.of(405, "not-supported", "$merge changes data: use POST")
    parameters = params.parameter_list(req)
    source_id = await patient_id(conn, parameters, "source-patient", req.base_url)
    target_id = await patient_id(conn, parameters, "target-patient", req.base_url)
    preview = params.boolean(req, parameters, "preview")
    if source_id == target_id:
        raise FHIRError.of(422, "business-rule", f"Patient/{source_id} cannot be merged into itself")
    result_patient = _result_patient(parameters, target_id, source_id)
    # Lock in id order, so two merges of the same pair cannot deadlock.
    stored = {fhir_id: await _current(conn, fhir_id, role, not preview)
              for fhir_id, role in sorted([(source_id, "source"), (target_id, "target")])}
    source, target = stored[source_id].json(), stored[target_id].json()
    already = replaced_by(source) or (await replaced.replacements(conn, [source_id])).get(source_id)
    if already:
        raise FHIRError.of(422, "business-rule", f"Patient/{source_id} was already merged into Patient/{already}")
    if replaced_by(target) or (await replaced.replacements(conn, [target_id])):
        raise FHIRError.of(422, "business-rule", f"The target Patient/{target_id} was itself merged into another "
                                                 "Patient; merge into that one")
    if target.get("active") is False:
        raise FHIRError.of(422, "business-rule", f"The target Patient/{target_id} is inactive")

    new_target = result_patient or _merged_target(target, source, source_id)
    await mrn.ensure_mrn(conn, new_target, target_id)  # a result-patient without the MRN keeps the target's
    new_source = _merged_source(source, target_id)
    counts: Counter = Counter()
    references = 0
    changes: list[merge_record.Change] = []
    for referrer in await referrers(conn, source_id, lock=not preview):
        resource = referrer.json()
        rewritten = retarget(resource, ("Patient", source_id), ("Patient", target_id), req.base_url)
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
        for fhir_id, content in ((source_id, new_source), (target_id, new_target)):
            written, _ = await repository.update(conn, content, fhir_id, base_url=req.base_url)
            changes.append(("Patient", fhir_id, stored[fhir_id].version_id, written.version_id))
            if fhir_id == target_id:
                result = written.json()
        record = await repository.create(conn, merge_record.provenance("merge", changes, datetime.now(timezone.utc)),
                                         base_url=req.base_url)
        await conn.execute("INSERT INTO patient_replaced (source, target, provenance) VALUES (%s, %s, %s)",
                           (stored[source_id].pk, stored[target_id].pk, record.pk))
        outcome = outcome_of(f"Merged Patient/{source_id} into Patient/{target_id}; Provenance/{record.fhir_id} "
                             "records it", counts, references)
    body = params.parameters_resource([
        {"name": "input", "resource": req.body},
        {"name": "outcome", "resource": outcome},
        {"name": "result", "resource": result},
    ])
    return Outcome(200, orjson.dumps(body))
