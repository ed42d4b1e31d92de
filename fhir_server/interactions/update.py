"""update: PUT a resource by id (update-as-create allowed), or conditionally by search criteria."""

from psycopg import AsyncConnection

from fhir_server import identity, workflow
from fhir_server.errors import FHIRError
from fhir_server.interactions.common import matches_locked, require_resource
from fhir_server.request import FHIRRequest, Outcome, parse_version_tag, resource_outcome
from fhir_server.storage import repository


async def update(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    resource = require_resource(req.body, req.resource_type)
    body_id = resource.get("id")
    if body_id is None:
        raise FHIRError.of(400, "required", f"The {req.resource_type} in the body needs an id equal to "
                                            f"'{req.id}' from the URL", f"{req.resource_type}.id")
    if body_id != req.id:
        raise FHIRError.of(400, "invalid", f"The id '{body_id}' in the body does not match '{req.id}' in the URL",
                           f"{req.resource_type}.id")
    if_match = parse_version_tag(req.header("if-match"), "If-Match")
    await identity.before_write(conn, resource, req.id, req.base_url)
    await workflow.before_write(conn, resource, req.id)
    stored, created = await repository.update(conn, resource, req.id, if_match=if_match,
                                              base_url=req.base_url)
    return resource_outcome(201 if created else 200, stored, req.base_url, location=created)


async def conditional_update(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    """PUT Type?criteria: none matches creates, one matches updates it, several gives 412."""
    resource = require_resource(req.body, req.resource_type)
    matches = await matches_locked(conn, req.resource_type, req.query)
    if len(matches) > 1:
        raise FHIRError.of(412, "multiple-matches",
                           f"The criteria match more than one {req.resource_type}; the update was not made")
    body_id = resource.get("id")
    if matches:
        fhir_id = matches[0][1]
        if body_id is not None and body_id != fhir_id:
            raise FHIRError.of(400, "invalid", f"The id '{body_id}' in the body differs from the id '{fhir_id}' "
                                               "of the resource the criteria match", f"{req.resource_type}.id")
    else:
        fhir_id = body_id or repository.new_id()
    if_match = parse_version_tag(req.header("if-match"), "If-Match")
    await identity.before_write(conn, resource, fhir_id, req.base_url)
    await workflow.before_write(conn, resource, fhir_id)
    stored, created = await repository.update(conn, resource, fhir_id, if_match=if_match,
                                              base_url=req.base_url)
    return resource_outcome(201 if created else 200, stored, req.base_url, location=created)
