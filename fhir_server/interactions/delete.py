"""delete: logical deletion by id or by criteria, refused while other resources still reference the target."""

from psycopg import AsyncConnection

from fhir_server import identity
from fhir_server.errors import FHIRError
from fhir_server.interactions.common import matches_locked
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search.engine import find_matches
from fhir_server.settings import get_settings
from fhir_server.storage import repository

MAX_CONDITIONAL_DELETES = 100


async def delete(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    deleted = await repository.delete(conn, req.resource_type, req.id)
    if deleted is None:
        return Outcome(204)
    await identity.after_delete(conn, req.resource_type, req.id)
    req.deleted_targets.append((req.resource_type, req.id))
    if not req.deferred_reference_check and get_settings().enforce_referential_integrity_on_delete:
        await repository.ensure_not_referenced(conn, req.deleted_targets)
    return Outcome(204, etag=deleted.etag, last_modified=deleted.last_updated)


async def conditional_delete(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    """DELETE Type?criteria: one match is deleted; several are deleted only if the server allows it."""
    settings = get_settings()
    matches = await matches_locked(conn, req.resource_type, req.query)
    if len(matches) > 1:
        if not settings.allow_multiple_delete:
            raise FHIRError.of(412, "multiple-matches", f"The criteria match more than one {req.resource_type}; "
                                                        "multiple deletes are not allowed on this server")
        matches = await find_matches(conn, req.resource_type, req.query, limit=MAX_CONDITIONAL_DELETES + 1)
        if len(matches) > MAX_CONDITIONAL_DELETES:
            raise FHIRError.of(412, "too-costly", f"The criteria match more than {MAX_CONDITIONAL_DELETES} "
                                                  f"{req.resource_type} resources")
    for _, fhir_id, _ in matches:
        if await repository.delete(conn, req.resource_type, fhir_id) is not None:
            await identity.after_delete(conn, req.resource_type, fhir_id)
            req.deleted_targets.append((req.resource_type, fhir_id))
    if not req.deferred_reference_check and settings.enforce_referential_integrity_on_delete:
        await repository.ensure_not_referenced(conn, req.deleted_targets)
    return Outcome(204)
