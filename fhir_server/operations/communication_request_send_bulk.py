"""CommunicationRequest/$send-bulk: one message template to many recipients, each with its own variables.

Everything is checked first (the template renders for every recipient, every recipient exists); then one
transaction writes all CommunicationRequests in a pipelined batch and their outbox rows in one statement,
and the worker delivers them as any other. They share a groupIdentifier (returned) to follow them by:
`CommunicationRequest?group-identifier=urn:fhir-server:bulk-send|<id>`.

Parameters: `template` (Reference to Basic), `medium` (code sms | whatsapp | email; default sms),
`recipient` (valueReference, or parts `reference` + `variable`...), `group` (Reference to a Group whose
members are the recipients), `variable` (name/value parts, for all recipients), `occurrence` (dateTime),
`priority` (code).
"""

from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.messaging import templates
from fhir_server.messaging.codes import CHANNEL_MEDIA, medium_concept
from fhir_server.messaging.recipients import RECIPIENT_TYPES
from fhir_server.messaging.requests import PRIORITY, TOPIC, due_at
from fhir_server.operations.basic_render import variables
from fhir_server.operations.definitions import operation_definition
from fhir_server.operations.parameters import one, parameter_list, value
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.storage import repository
from fhir_server.validation import validate_resource
from fhir_server.worker import outbox

DEFINITION = operation_definition("CommunicationRequest-send-bulk")
BULK_IDENTIFIER = "urn:fhir-server:bulk-send"
MAX_LISTED_ISSUES = 20


def _recipients(parameters: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    found = []
    for parameter in parameters:
        if parameter.get("name") != "recipient":
            continue
        parts = parameter.get("part")
        reference = (parameter.get("valueReference") if parts is None
                     else value(one(parts, "reference"), "Reference")) or {}
        if not isinstance(reference.get("reference"), str):
            raise FHIRError.of(400, "invalid", "Each 'recipient' needs a reference (valueReference, or a part "
                                               "'reference')", "recipient")
        found.append((reference["reference"], variables(parts or [])))
    return found


async def _group_members(conn: AsyncConnection, reference: str) -> list[str]:
    resource_type, _, fhir_id = reference.partition("/")
    stored = await repository.read(conn, "Group", fhir_id) if resource_type == "Group" else None
    if stored is None or stored.deleted:
        raise FHIRError.of(422, "not-found", f"The group {reference} does not exist", "group")
    return [member["entity"]["reference"] for member in stored.json().get("member") or []
            if isinstance((member.get("entity") or {}).get("reference"), str) and not member.get("inactive")]


async def _missing(conn: AsyncConnection, references: list[str]) -> list[str]:
    """The references among `references` that name no existing recipient."""
    pairs = [reference.partition("/") for reference in references]
    rows = await (await conn.execute(
        "SELECT r.resource_type || '/' || r.fhir_id FROM resource r "
        "JOIN unnest(%s::text[], %s::text[]) AS w(resource_type, fhir_id) USING (resource_type, fhir_id) "
        "WHERE NOT r.deleted", ([pair[0] for pair in pairs], [pair[2] for pair in pairs]))).fetchall()
    existing = {row[0] for row in rows}
    return [reference for reference in references if reference not in existing]


def _request(template: str, channel: str, recipient: str, values: dict[str, str], group: dict[str, str],
             extra: dict[str, Any]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "CommunicationRequest", "status": "active", "groupIdentifier": group,
        "recipient": [{"reference": recipient}], "medium": [medium_concept(channel)],
        "payload": [{"contentReference": {"reference": template},
                     "extension": [{"url": templates.TEMPLATE_VARIABLES_EXTENSION,
                                    "extension": [{"url": name, "valueString": text}
                                                  for name, text in sorted(values.items())]}]}],
        **extra,
    }
    if recipient.startswith("Patient/"):
        request["subject"] = {"reference": recipient}
    return request


async def send_bulk(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    parameters = parameter_list(req)
    template_reference = (value(one(parameters, "template"), "Reference") or {}).get("reference")
    if not isinstance(template_reference, str):
        raise FHIRError.of(400, "required", "$send-bulk needs 'template' (a Reference to a message template)",
                           "template")
    channel = value(one(parameters, "medium"), "Code", "String") or "sms"
    if channel not in CHANNEL_MEDIA:
        raise FHIRError.of(400, "invalid", f"medium must be one of {', '.join(sorted(CHANNEL_MEDIA))}", "medium")
    common = variables(parameters)
    recipients = _recipients(parameters)
    group = value(one(parameters, "group"), "Reference")
    if group is not None:
        recipients += [(member, {}) for member in await _group_members(conn, group.get("reference", ""))]
    if not recipients:
        raise FHIRError.of(400, "required", "$send-bulk needs 'recipient's or a 'group' with members", "recipient")
    template = await templates.load(conn, template_reference)

    issues: list[Issue] = []
    for reference, own in recipients:
        if reference.partition("/")[0] not in RECIPIENT_TYPES:
            issues.append(Issue("invalid", f"{reference} is not a Patient, RelatedPerson or Practitioner"))
        issues += templates.check_variables(template, channel, {**common, **own}, reference)
    if not issues:
        issues += [Issue("not-found", f"{reference} does not exist")
                   for reference in await _missing(conn, list(dict.fromkeys(r for r, _ in recipients)))]
    if issues:
        shown = issues[:MAX_LISTED_ISSUES]
        if len(issues) > MAX_LISTED_ISSUES:
            shown.append(Issue("too-costly", f"... and {len(issues) - MAX_LISTED_ISSUES} more issues",
                               severity="information"))
        raise FHIRError(422, shown)

    extra: dict[str, Any] = {"authoredOn": repository.instant(datetime.now(timezone.utc))}
    occurrence = value(one(parameters, "occurrence"), "DateTime")
    if occurrence is not None:
        extra["occurrenceDateTime"] = occurrence
    priority = value(one(parameters, "priority"), "Code")
    if priority is not None:
        extra["priority"] = priority
    bulk = {"system": BULK_IDENTIFIER, "value": str(uuid4())}
    requests = [_request(template_reference, channel, reference, {**common, **own}, bulk, extra)
                for reference, own in recipients]
    # The requests differ only in references and variable strings: one is checked for them all.
    invalid = [issue for issue in validate_resource(requests[0], "CommunicationRequest") if issue.severity != "warning"]
    if invalid:
        raise FHIRError(422, invalid)
    async with conn.transaction():
        stored = await repository.create_many(conn, requests, base_url=req.base_url)
        await outbox.add_many(conn, TOPIC, "CommunicationRequest",
                              [(item.fhir_id, reference) for item, (reference, _) in zip(stored, recipients)],
                              due_at=due_at(requests[0]), priority=PRIORITY.get(priority, 3))
    return Outcome(200, orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "count", "valueInteger": len(stored)},
        {"name": "groupIdentifier", "valueIdentifier": bulk},
    ]}))
