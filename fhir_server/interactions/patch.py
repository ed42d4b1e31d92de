"""patch: apply a JSON Patch (RFC 6902) to the current version, then validate and store it as an update."""

from typing import Any

import jsonpatch
from psycopg import AsyncConnection

from fhir_server import identity, json_numbers, workflow
from fhir_server.errors import FHIRError
from fhir_server.interactions.common import matches_locked, require_resource
from fhir_server.request import FHIRRequest, Outcome, parse_version_tag, resource_outcome
from fhir_server.storage import repository


def _apply(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise FHIRError.of(400, "structure", "A JSON Patch body must be an array of operations")
    try:
        return jsonpatch.JsonPatch(operations).apply(document)
    except jsonpatch.InvalidJsonPatch as error:
        raise FHIRError.of(400, "structure", f"Invalid JSON Patch: {error}") from error
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
        raise FHIRError.of(422, "processing", f"The JSON Patch could not be applied: {error}") from error


async def patch(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    fhir_id = req.id
    if fhir_id is None:
        matches = await matches_locked(conn, req.resource_type, req.query)
        if len(matches) != 1:
            raise FHIRError.of(404 if not matches else 412, "not-found" if not matches else "multiple-matches",
                               f"The patch criteria match {len(matches) or 'no'} {req.resource_type} resources")
        fhir_id = matches[0][1]
    current = await repository.read(conn, req.resource_type, fhir_id, for_update=True)
    if current is None:
        raise FHIRError.of(404, "not-found", f"{req.resource_type}/{fhir_id} is not known")
    if current.deleted:
        raise FHIRError.of(410, "deleted", f"{req.resource_type}/{fhir_id} was deleted")
    if_match = parse_version_tag(req.header("if-match"), "If-Match")
    if if_match is not None and if_match != current.version_id:
        raise FHIRError.of(412, "conflict", f"If-Match version {if_match} does not match the current version "
                                            f"{current.version_id} of {req.resource_type}/{fhir_id}")
    patched = _apply(json_numbers.loads(current.content or b"{}"), req.body)
    if patched.get("resourceType") != req.resource_type or patched.get("id") != fhir_id:
        raise FHIRError.of(422, "processing", "A patch may not change the resourceType or id")
    resource = require_resource(patched, req.resource_type)
    await identity.before_write(conn, resource, fhir_id, req.base_url)
    await workflow.before_write(conn, resource, fhir_id)
    stored, _ = await repository.update(conn, resource, fhir_id, method="PATCH", base_url=req.base_url)
    return resource_outcome(200, stored, req.base_url)
