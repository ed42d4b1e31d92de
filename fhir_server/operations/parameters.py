"""Reading the `Parameters` resource that operations take as their body, and the query-string form of GETs."""

from typing import Any

from fhir_server.errors import FHIRError
from fhir_server.request import FHIRRequest


def parameter_list(req: FHIRRequest) -> list[dict[str, Any]]:
    """The body's Parameters.parameter (empty without a body); 400 for any other body."""
    body = req.body
    if body is None:
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError.of(400, "invalid", f"${req.operation} takes a Parameters resource as its body")
    parameters = body.get("parameter") or []
    if not isinstance(parameters, list) or not all(isinstance(parameter, dict) for parameter in parameters):
        raise FHIRError.of(400, "structure", "Parameters.parameter must be an array of objects", "Parameters.parameter")
    return parameters


def one(parameters: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The parameter called `name`; 400 if it is repeated."""
    found = [parameter for parameter in parameters if parameter.get("name") == name]
    if len(found) > 1:
        raise FHIRError.of(400, "invalid", f"The parameter '{name}' may be given only once", name)
    return found[0] if found else None


def value(parameter: dict[str, Any] | None, *types: str) -> Any:
    """The `value[x]` of a parameter, for the first of `types` it carries (e.g. "Boolean", "Integer")."""
    if parameter is None:
        return None
    for kind in types:
        if "value" + kind in parameter:
            return parameter["value" + kind]
    return None


def boolean(req: FHIRRequest, parameters: list[dict[str, Any]], name: str) -> bool:
    """A boolean input, from the body or (for a GET) the query string; false when absent."""
    found = value(one(parameters, name), "Boolean")
    if found is None:
        text = next(iter(req.query_values(name)), None)
        if text is None:
            return False
        if text not in ("true", "false"):
            raise FHIRError.of(400, "invalid", f"{name} must be true or false", name)
        return text == "true"
    if not isinstance(found, bool):
        raise FHIRError.of(400, "invalid", f"{name} must be a boolean", name)
    return found


def integer(req: FHIRRequest, parameters: list[dict[str, Any]], name: str) -> int | None:
    found = value(one(parameters, name), "Integer", "PositiveInt", "UnsignedInt")
    if found is None:
        text = next(iter(req.query_values(name)), None)
        if text is None:
            return None
        if not text.isdigit():
            raise FHIRError.of(400, "invalid", f"{name} must be a non-negative integer", name)
        return int(text)
    if type(found) is not int or found < 0:
        raise FHIRError.of(400, "invalid", f"{name} must be a non-negative integer", name)
    return found


def parameters_resource(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": parts}
