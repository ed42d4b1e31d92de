"""$validate on type and instance level: the OperationOutcome a write would give, without writing."""

from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.storage import repository
from fhir_server.validation import validate_resource

DEFINITION = operation_definition("Resource-validate")


def _parameters(body: Any) -> tuple[Any, str | None]:
    """The resource and mode, from a Parameters body or a bare resource body."""
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource, mode = None, None
        for parameter in body.get("parameter") or []:
            if parameter.get("name") == "resource":
                resource = parameter.get("resource")
            elif parameter.get("name") == "mode":
                mode = parameter.get("valueCode") or parameter.get("valueString")
        return resource, mode
    return body, None


async def validate(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    resource, mode = _parameters(req.body)
    mode = mode or next(iter(req.query_values("mode")), None)  # GET [type]/[id]/$validate?mode=delete
    issues: list[Issue] = []
    if mode == "delete":
        if req.id is None:
            raise FHIRError.of(400, "required", "mode=delete needs an instance: POST [type]/[id]/$validate")
        issues += [Issue("conflict", f"{referrer} references {req.resource_type}/{req.id}")
                   for referrer, _, _ in await repository.referrers(conn, [(req.resource_type, req.id)])]
    elif resource is None:
        raise FHIRError.of(400, "required", "$validate needs a resource, in the body or as parameter 'resource'")
    else:
        issues += validate_resource(resource, req.resource_type)
        if req.id is not None and isinstance(resource, dict) and resource.get("id") not in (None, req.id):
            issues.append(Issue("invalid", f"The id '{resource.get('id')}' does not match '{req.id}' in the URL",
                                expression=(f"{req.resource_type}.id",)))
    if not issues:
        issues = [Issue("informational", "No issues detected during validation", severity="information")]
    return Outcome(200, orjson.dumps(operation_outcome(issues)))
