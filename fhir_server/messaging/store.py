"""Writing the resources that notifications and workflows produce, validated like any client's, each with a
Provenance naming the server as its agent (these writes are the server's own actions, not a client's)."""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.audit.provenance import server_provenance
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredResource
from fhir_server.validation import validate_resource


async def store(conn: AsyncConnection, resource: dict[str, Any]) -> StoredResource:
    """Create `resource`, or write a new version when it has an id; an invalid one is a bug, so it raises."""
    issues = [issue for issue in validate_resource(resource, resource["resourceType"]) if issue.severity != "warning"]
    if issues:
        raise ValueError(f"invalid {resource['resourceType']}: " + "; ".join(issue.diagnostics for issue in issues))
    if "id" not in resource:
        stored = await repository.create(conn, resource)
    else:
        stored, _ = await repository.update(conn, resource, resource["id"])
    await repository.create(conn, server_provenance(
        [f"{stored.resource_type}/{stored.fhir_id}/_history/{stored.version_id}"],
        "CREATE" if stored.version_id == 1 else "UPDATE"))
    return stored
