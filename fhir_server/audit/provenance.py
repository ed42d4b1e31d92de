"""Provenance of writes: the client's `X-Provenance` header (R4 RESTful API), completed with what was written."""

from datetime import datetime, timezone
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server import json_numbers
from fhir_server.audit.events import SERVER
from fhir_server.auth.enforce import Principal
from fhir_server.errors import FHIRError, Issue
from fhir_server.storage import repository
from fhir_server.validation import validate_resource

HEADER = "x-provenance"
SERVER_AGENT = {
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                         "code": "performer", "display": "Performer"}]},
    "who": SERVER,
}
_PLACEHOLDER_TARGET = [{"reference": "Provenance/placeholder"}]


def from_header(value: str, principal: Principal | None) -> dict[str, Any]:
    """The Provenance a client sent, checked before anything is written: 400 unless it is a valid Provenance,
    403 unless the caller's token may create Provenance (`user/Provenance.c`, `system/*.cruds`, ...).
    `target` is the server's to fill: the versions the request writes, whatever the client put there."""
    if principal is not None:
        try:
            principal.restriction("Provenance", "c")
        except FHIRError as error:
            raise FHIRError.of(403, "forbidden", "X-Provenance asks the server to create a Provenance: "
                                                 + error.issues[0].diagnostics, "X-Provenance") from None
    try:
        provenance = json_numbers.loads(value.encode())
    except orjson.JSONDecodeError as error:
        raise FHIRError.of(400, "structure", f"X-Provenance is not valid JSON: {error}", "X-Provenance") from None
    if not isinstance(provenance, dict) or provenance.get("resourceType") != "Provenance":
        raise FHIRError.of(400, "invalid", "X-Provenance must be a Provenance resource", "X-Provenance")
    provenance = {key: value for key, value in provenance.items() if key not in ("id", "meta", "target")}
    provenance.setdefault("recorded", repository.instant(datetime.now(timezone.utc)))
    issues = validate_resource({**provenance, "target": _PLACEHOLDER_TARGET})
    if issues:
        raise FHIRError(400, [Issue(issue.code, f"X-Provenance: {issue.diagnostics}", issue.severity,
                                    issue.expression) for issue in issues])
    return provenance


async def record(conn: AsyncConnection, provenance: dict[str, Any], written: list[str], base_url: str) -> None:
    """Store `provenance` with every version the request wrote as its target, in the request's transaction."""
    if written:
        await repository.create(conn, {**provenance, "target": [{"reference": version} for version in written]},
                                base_url=base_url)


def server_provenance(targets: list[str], operation: str) -> dict[str, Any]:
    """A Provenance of a write the server made by itself (a worker action), with the server as its agent;
    `operation` is a v3-DataOperation code (CREATE, UPDATE, DELETE)."""
    return {
        "resourceType": "Provenance", "target": [{"reference": target} for target in targets],
        "recorded": repository.instant(datetime.now(timezone.utc)),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": operation}]},
        "agent": [SERVER_AGENT],
    }
