"""Writing the resources that notifications produce, validated like any client's."""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.storage import repository
from fhir_server.storage.repository import StoredResource
from fhir_server.validation import validate_resource


async def store(conn: AsyncConnection, resource: dict[str, Any]) -> StoredResource:
    """Create `resource`, or write a new version when it has an id; an invalid one is a bug, so it raises."""
    issues = [issue for issue in validate_resource(resource, resource["resourceType"]) if issue.severity != "warning"]
    if issues:
        raise ValueError(f"invalid {resource['resourceType']}: " + "; ".join(issue.diagnostics for issue in issues))
    if "id" not in resource:
        return await repository.create(conn, resource)
    stored, _ = await repository.update(conn, resource, resource["id"])
    return stored
