"""Merged-away (replaced) Patients: recorded by $merge, and no longer allowed as the target of new references."""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.identity.references import local_target, references

# Records of the past: they keep pointing at the Patient as it was, and are never retargeted.
HISTORICAL_TYPES = frozenset({"Provenance", "AuditEvent"})


def _new_patient_references(resource: dict[str, Any], base_url: str | None) -> set[str]:
    """Ids of the Patients `resource` references, leaving out a Patient's own links (which record merges)."""
    ids = set()
    for path, reference in references(resource):
        if resource.get("resourceType") == "Patient" and path[:1] == ("link",):
            continue
        target = local_target(reference["reference"], base_url)
        if target is not None and target[0] == "Patient":
            ids.add(target[1])
    return ids


async def replacements(conn: AsyncConnection, patient_ids: list[str]) -> dict[str, str]:
    """For those of `patient_ids` that were merged away: source id → the id of the Patient that replaced it."""
    if not patient_ids:
        return {}
    rows = await (await conn.execute(
        "SELECT s.fhir_id, t.fhir_id FROM resource s JOIN patient_replaced p ON p.source = s.id "
        "JOIN resource t ON t.id = p.target WHERE s.resource_type = 'Patient' AND s.fhir_id = ANY(%s)",
        (patient_ids,))).fetchall()
    return {row[0]: row[1] for row in rows}


async def refuse_replaced_references(conn: AsyncConnection, resource: dict[str, Any], base_url: str | None) -> None:
    """422 if `resource` references a Patient that was merged into another; costs nothing without Patient
    references, else one indexed lookup."""
    if resource.get("resourceType") in HISTORICAL_TYPES:
        return
    found = await replacements(conn, sorted(_new_patient_references(resource, base_url)))
    if found:
        raise FHIRError(422, [
            Issue("business-rule", f"Patient/{source} was merged into Patient/{target}: reference Patient/{target} "
                                   "instead", expression=(resource.get("resourceType") or "Resource",))
            for source, target in sorted(found.items())
        ])
