"""Basic/[id]/$render (or Basic/$render with the template as `resource`): a message template's subject and
body for a channel with the given variables, without sending anything (messaging/templates.py)."""

from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.messaging import templates
from fhir_server.operations.definitions import operation_definition
from fhir_server.operations.parameters import one, parameter_list, value
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.storage import repository

DEFINITION = operation_definition("Basic-render")


def variables(parameters: list[dict[str, Any]], name: str = "variable") -> dict[str, str]:
    """`variable` parameters, each with parts `name` and `value` (a string)."""
    found: dict[str, str] = {}
    for parameter in parameters:
        if parameter.get("name") != name:
            continue
        parts = parameter.get("part") or []
        key, text = value(one(parts, "name"), "String", "Code"), value(one(parts, "value"), "String")
        if not isinstance(key, str) or not isinstance(text, str):
            raise FHIRError.of(400, "invalid", f"Each '{name}' needs the parts 'name' and 'value' (strings)", name)
        if key in found:
            raise FHIRError.of(400, "invalid", f"The variable '{key}' is given twice", name)
        found[key] = text
    return found


async def render(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    parameters = parameter_list(req)
    if req.id is not None:
        stored = await repository.read(conn, "Basic", req.id)
        if stored is None or stored.deleted:
            raise FHIRError.of(404, "not-found", f"Basic/{req.id} is not known")
        resource = stored.json()
    else:
        resource = (one(parameters, "resource") or {}).get("resource")
        if not isinstance(resource, dict):
            raise FHIRError.of(400, "required", "Basic/$render needs the template as parameter 'resource', "
                                                "or call it on an instance: Basic/[id]/$render")
    channel = value(one(parameters, "channel"), "Code", "String") or templates.DEFAULT_CHANNEL
    template = templates.parse(resource)
    content = templates.render(template, channel, variables(parameters))
    output: list[dict[str, Any]] = [{"name": "channel", "valueCode": channel}]
    if content.subject is not None:
        output.append({"name": "subject", "valueString": content.subject})
    output += [{"name": "body", "valueString": content.body}, {"name": "phi", "valueBoolean": template.phi}]
    return Outcome(200, orjson.dumps({"resourceType": "Parameters", "parameter": output}))
