"""Patient/$unmerge: undo a $merge from the Provenance it wrote (or from the merged-away source Patient).

Each resource the merge rewrote gets back its references to the source, at the places they were before
the merge, as a new version; whatever changed there since the merge is kept. The source and the target are
restored to their pre-merge versions when unchanged since the merge; otherwise only the merge's own
changes are taken back (the links, the source's `active`, the identifiers copied to the target).
"""

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from fhir_server import json_numbers
from fhir_server.auth.enforce import authorize_changes
from fhir_server.errors import FHIRError
from fhir_server.identity import merge_record, replaced
from fhir_server.identity.references import local_target, restore_references
from fhir_server.operations import parameters as params
from fhir_server.operations.definitions import operation_definition
from fhir_server.operations.patient_lookup import patient_id
from fhir_server.operations.patient_merge import limit_lock_waits, outcome_of
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.settings import get_settings
from fhir_server.storage import repository

DEFINITION = operation_definition("Patient-unmerge")


async def _merge_row(conn: AsyncConnection, req: FHIRRequest, parameters: list[dict[str, Any]]
                     ) -> tuple[str, str, str]:
    """(source id, target id, merge Provenance id) of the merge to undo, locked; 422 if there is none."""
    provenance = params.value(params.one(parameters, "provenance"), "Reference")
    if provenance is not None:
        target = local_target((provenance or {}).get("reference") or "", req.base_url)
        if target is None or target[0] != "Provenance":
            raise FHIRError.of(400, "invalid", "provenance must reference a Provenance on this server", "provenance")
        condition, value = "pr.resource_type = 'Provenance' AND pr.fhir_id = %s", target[1]
    else:
        source_id = await patient_id(conn, parameters, "source-patient", req.base_url)
        await replaced.refuse_during_merge(conn, [source_id], "unmerged")
        condition, value = "s.resource_type = 'Patient' AND s.fhir_id = %s", source_id
    row = await (await conn.execute(
        "SELECT s.fhir_id, t.fhir_id, pr.fhir_id FROM patient_replaced p JOIN resource s ON s.id = p.source "
        f"JOIN resource t ON t.id = p.target JOIN resource pr ON pr.id = p.provenance WHERE {condition} "
        "FOR UPDATE OF p", (value,))).fetchone()
    if row is None:
        raise FHIRError.of(422, "not-found", "No merge to undo: it was never made, or was undone already")
    return row[0], row[1], row[2]


def _without_merge(current: dict[str, Any], prior: dict[str, Any], merged: dict[str, Any],
                   other_id: str) -> dict[str, Any]:
    """`current` less what the merge added (links to `other_id`, copied identifiers), `active` as before it."""
    undone = dict(current)
    links = [link for link in current.get("link") or []
             if local_target((link.get("other") or {}).get("reference") or "", None) != ("Patient", other_id)
             or link in (prior.get("link") or [])]
    undone.pop("link", None)
    if links:
        undone["link"] = links
    before = prior.get("identifier") or []
    added = [identifier for identifier in merged.get("identifier") or [] if identifier not in before]
    identifiers = [identifier for identifier in current.get("identifier") or [] if identifier not in added]
    undone.pop("identifier", None)
    if identifiers:
        undone["identifier"] = identifiers
    undone.pop("active", None)
    if "active" in prior:
        undone["active"] = prior["active"]
    return undone


async def _version(conn: AsyncConnection, kind: str, fhir_id: str, version: int) -> dict[str, Any]:
    stored = await repository.vread(conn, kind, fhir_id, version)
    return stored.json() if stored is not None else {}


async def unmerge(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    parameters = params.parameter_list(req)
    await limit_lock_waits(conn, get_settings().merge_lock_timeout)
    source_id, target_id, provenance_id = await _merge_row(conn, req, parameters)
    record = await repository.read(conn, "Provenance", provenance_id)
    assert record is not None
    changed: dict[str, list[str]] = {}
    for kind, fhir_id, _, _ in merge_record.changes_of(record.json()):
        changed.setdefault(kind, []).append(fhir_id)
    await authorize_changes(conn, req.principal, "u", changed, "restore")
    # The rows it rewrites reference the target now: their writers' lock first, as a merge takes its source's.
    await replaced.lock_for_merge(conn, target_id)
    counts: Counter = Counter()
    restored = 0
    changes: list[merge_record.Change] = []
    for kind, fhir_id, before, after in merge_record.changes_of(record.json()):
        current = await repository.read(conn, kind, fhir_id, for_update=True)
        if current is None or current.deleted:
            continue
        prior = await _version(conn, kind, fhir_id, before)
        if kind == "Patient" and fhir_id in (source_id, target_id):
            if current.version_id == after:
                content = prior
            else:
                other = target_id if fhir_id == source_id else source_id
                content = _without_merge(current.json(), prior, await _version(conn, kind, fhir_id, after), other)
        else:
            content = current.json()
            count = restore_references(prior, content, source_id, target_id, req.base_url)
            if not count:
                continue
            counts[kind] += 1
            restored += count
        written, _ = await repository.update(conn, content, fhir_id, base_url=req.base_url)
        if written.version_id != current.version_id:
            changes.append((kind, fhir_id, current.version_id, written.version_id))
    await repository.create(conn, merge_record.provenance("unmerge", changes, datetime.now(timezone.utc),
                                                          [f"Provenance/{provenance_id}"]), base_url=req.base_url)
    await conn.execute("DELETE FROM patient_replaced WHERE source = (SELECT id FROM resource "
                       "WHERE resource_type = 'Patient' AND fhir_id = %s)", (source_id,))
    source = await repository.read(conn, "Patient", source_id)
    assert source is not None
    outcome = outcome_of(f"Undid the merge of Patient/{source_id} into Patient/{target_id} "
                         f"(Provenance/{provenance_id}); references moved back:", counts, restored)
    body = params.parameters_resource([{"name": "outcome", "resource": outcome},
                                       {"name": "result", "resource": source.json()}])
    return Outcome(200, json_numbers.dumps(body))
