"""Validation of every write against FHIR R4 4.0.1: JSON structure plus required code bindings."""

from typing import Any

from fhir_server.errors import Issue
from fhir_server.validation.bindings import binding_issues
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
        bindings = binding_issues(resource, resource_type)
        structure = schema_issues(resource, resource_type)
    except RecursionError:
        return [Issue("structure", "The resource is nested too deeply to validate", expression=(resource_type,))]
    # The schema also lists the codes of some bindings; report each bad code once, as the binding violation.
    bound_paths = {issue.expression for issue in bindings}
    return [issue for issue in structure
            if not (issue.code == "code-invalid" and issue.expression in bound_paths)] + bindings
