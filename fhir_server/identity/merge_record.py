"""What $merge leaves behind for $unmerge: the Provenance it writes and the patient_replaced row."""

from datetime import datetime
from typing import Any

from fhir_server.audit.provenance import SERVER_AGENT
from fhir_server.storage.repository import instant

LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"

Change = tuple[str, str, int, int]
"""(resource type, id, version before, version after) of one resource the operation changed."""


def provenance(activity: str, changes: list[Change], recorded: datetime,
               sources: list[str] = ()) -> dict[str, Any]:
    """A Provenance of `activity` (merge or unmerge): `target` lists the versions written, `entity` the versions
    they revise (role revision) and any resource the activity worked from (role source)."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"{kind}/{fhir_id}/_history/{after}"} for kind, fhir_id, _, after in changes],
        "recorded": instant(recorded),
        "activity": {"coding": [{"system": LIFECYCLE, "code": activity}]},
        "agent": [SERVER_AGENT],
        "entity": [
            *({"role": "revision", "what": {"reference": f"{kind}/{fhir_id}/_history/{before}"}}
              for kind, fhir_id, before, _ in changes),
            *({"role": "source", "what": {"reference": reference}} for reference in sources),
        ],
    }


def changes_of(record: dict[str, Any]) -> list[Change]:
    """The changes a merge Provenance lists, paired from its `target` and `entity` (role revision) versions."""
    def versions(references: list[str]) -> dict[tuple[str, str], int]:
        found = {}
        for reference in references:
            kind, fhir_id, _, version = reference.split("/")
            found[(kind, fhir_id)] = int(version)
        return found

    after = versions([target["reference"] for target in record.get("target") or []])
    before = versions([entity["what"]["reference"] for entity in record.get("entity") or []
                       if entity.get("role") == "revision"])
    return [(kind, fhir_id, before[(kind, fhir_id)], version) for (kind, fhir_id), version in after.items()
            if (kind, fhir_id) in before]
