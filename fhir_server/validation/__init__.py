"""Validation of every write against FHIR R4 4.0.1: JSON structure, plus the element rules (cardinality, choice
types, integers, required code bindings) the JSON Schema leaves out."""

from typing import Any

from fhir_server.errors import Issue
from fhir_server.validation.elements import element_issues
from fhir_server.validation.schema import resource_types, schema_issues


def validate_resource(resource: object, expected_type: str | None = None) -> list[Issue]:
    """Return every problem found (empty list = valid)."""
    if not isinstance(resource, dict):
        return [Issue("invalid", f"A resource must be a JSON object, not {type(resource).__name__}")]
    resource_type: Any = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [Issue("invalid", "The resource has no resourceType", expression=("resourceType",))]
    if resource_type not in resource_types():
        return [Issue("invalid", f"Unknown resourceType '{resource_type}'", expression=("resourceType",))]
    if expected_type is not None and resource_type != expected_type:
        return [Issue("invalid", f"Expected a {expected_type} resource, got {resource_type}",
                      expression=("resourceType",))]
    try:
        elements = element_issues(resource, resource_type)
        structure = schema_issues(resource, resource_type)
    except RecursionError:
        return [Issue("structure", "The resource is nested too deeply to validate", expression=(resource_type,))]
    # The schema sees some of the same problems (a code outside an enum, an array where one value belongs):
    # report each such element once, in the terms of the FHIR rule the element walk checked.
    walked = {issue.expression for issue in elements}
    return [issue for issue in structure if issue.expression not in walked] + elements
