"""create: POST a resource, server-assigned id; conditional create with If-None-Exist."""

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from fhir_server import identity, workflow
from fhir_server.documents.hooks import inline_attachments
from fhir_server.errors import FHIRError
from fhir_server.identity.replaced import referenced_patients
from fhir_server.interactions.common import matches_locked, parse_condition, require_resource
from fhir_server.request import FHIRRequest, Outcome, resource_outcome
from fhir_server.storage import repository


async def create(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    """Create; `req.assigned_id` is set by a transaction that assigned the id of a `urn:uuid:` entry."""
    resource = require_resource(req.body, req.resource_type)
    if conn.info.transaction_status == TransactionStatus.IDLE and (
            referenced_patients(resource, req.base_url) or inline_attachments(resource)):
        # The merged-away check holds a lock until the commit (identity/replaced.py), and inline attachment
        # bytes become a Binary that must commit with the resource; other creates keep their single
        # autocommit statement.
        async with conn.transaction():
            return await create(conn, req)
    condition = req.header("if-none-exist")
    if condition:
        matches = await matches_locked(conn, req.resource_type, parse_condition(condition))
        if len(matches) > 1:
            raise FHIRError.of(412, "multiple-matches",
                               f"If-None-Exist '{condition}' matches more than one {req.resource_type}")
        if matches:
            existing = await repository.read(conn, req.resource_type, matches[0][1])
            return resource_outcome(200, existing, req.base_url, location=True)
    await identity.before_write(conn, resource, None, req.base_url)  # MRN for a Patient; merged-away references
    await workflow.before_write(conn, resource, None)
    # The spec: an id in the body of a create is ignored; the server assigns one.
    stored = await repository.create(conn, resource, req.assigned_id, base_url=req.base_url)
    return resource_outcome(201, stored, req.base_url, location=True)
