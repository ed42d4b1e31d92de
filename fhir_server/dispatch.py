"""Running one request: route it, authorize it, call the interaction. HTTP requests and Bundle entries alike."""

from functools import partial

from psycopg import AsyncConnection

from fhir_server.audit.events import resource_reference
from fhir_server.audit.interceptor import audited
from fhir_server.auth.enforce import HIDDEN_FROM_PATIENTS, in_patient_compartment, not_found, permission_for
from fhir_server.errors import FHIRError
from fhir_server.interactions import capabilities, create, delete, history, patch, read, search, update
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.router import Handler, route
from fhir_server.search.engine import Compartment, Restriction, find_matches

# The interaction each handler performs, as far as authorization is concerned.
KINDS = {
    read.read: "read", read.vread: "vread", search.search: "search", create.create: "create",
    update.update: "update", update.conditional_update: "update", patch.patch: "patch", delete.delete: "delete",
    delete.conditional_delete: "delete",
}
# Operations authorized exactly as a search: the token's filters and compartment limit their results.
SEARCH_OPERATIONS = frozenset({"semantic-search"})
# Instance interactions on an existing resource outside the caller's compartment answer 404.
INSTANCE_CHECKED = frozenset({"read", "vread", "history-instance", "patch", "delete", "update", "operation"})
WRITES = frozenset({"create", "update", "patch"})
# What a request that could not be routed tried to do, from its method alone (for its AuditEvent).
METHOD_KINDS = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}


def _kind(req: FHIRRequest, handler: object) -> str:
    if handler is history.history:
        return "history-instance" if req.id else "history"
    if req.operation is not None:
        if handler is capabilities.capabilities:
            return "capabilities"
        return "search" if req.operation in SEARCH_OPERATIONS else "operation"
    if handler in KINDS:
        return KINDS[handler]
    # The one handler not in KINDS: a Bundle posted to the base (interactions.transaction imports this module).
    return "transaction" if isinstance(req.body, dict) and req.body.get("type") == "transaction" else "batch"


def requested_kind(req: FHIRRequest, handler: Handler | None) -> str:
    """The interaction a request refused before dispatch attempted: its route's, or a guess from its method."""
    if handler is not None:
        return _kind(req, handler)
    if req.operation is not None:
        return "operation"
    if req.method in ("GET", "HEAD") and (req.search or req.id is None):
        return "search"
    return METHOD_KINDS.get(req.method, "operation")


async def dispatch(conn: AsyncConnection, req: FHIRRequest, handler: Handler | None = None) -> Outcome:
    """`handler` is the route of `req` when the caller has looked it up already."""
    handler = handler or route(req)
    kind = _kind(req, handler)
    if kind == "capabilities":
        return await handler(conn, req)
    return await audited(conn, req, kind, partial(_authorized, conn, req, handler, kind))  # the audit interceptor


def _written_id(outcome: Outcome, req: FHIRRequest) -> str | None:
    """The id a write stored, as its AuditEvent names it: from the Location (whatever `Prefer: return=` asked
    for the body), the id in the URL, or the body of a conditional update."""
    written = resource_reference(req, outcome)
    return written.split("/")[1] if written is not None else None


async def _authorized(conn: AsyncConnection, req: FHIRRequest, handler: Handler, kind: str) -> Outcome:
    """Authorize `req` against its caller's token (entries of a Bundle are authorized one by one), then run it."""
    principal = req.principal
    if principal is None or kind in ("transaction", "batch"):
        return await handler(conn, req)
    permission = permission_for(req.method, kind, req.operation)
    patient = principal.restriction(req.resource_type, permission)
    filters = principal.filters(req.resource_type, permission)
    if patient is not None:
        # One rule for every request under patient/ scopes: resources labelled for staff only do not exist.
        filters += (("_security:not", "|".join(HIDDEN_FROM_PATIENTS)),)
    req.restriction = Restriction(Compartment("Patient", patient) if patient else None, principal.readable_types(),
                                  HIDDEN_FROM_PATIENTS if patient else None, filters)
    if kind == "search":
        req.query = req.query + list(filters)
        return await handler(conn, req)
    if filters and req.id is not None and kind in INSTANCE_CHECKED \
            and not await find_matches(conn, req.resource_type, [("_id", req.id), *filters], limit=1):
        raise not_found(req.resource_type, req.id)
    if patient is None and not filters:
        return await handler(conn, req)
    if patient is not None and req.id is not None and kind in INSTANCE_CHECKED \
            and not await in_patient_compartment(conn, req.resource_type, req.id, patient):
        exists = await conn.execute("SELECT 1 FROM resource WHERE resource_type = %s AND fhir_id = %s",
                                    (req.resource_type, req.id))
        if kind != "update" or await exists.fetchone() is not None:
            raise not_found(req.resource_type, req.id)
    outcome = await handler(conn, req)
    if kind in WRITES:
        # Checked on what was written, inside the request's transaction: a refusal undoes the write.
        written_id = _written_id(outcome, req)
        if filters and not await find_matches(conn, req.resource_type, [("_id", written_id), *filters], limit=1):
            raise FHIRError.of(403, "forbidden", f"The {req.resource_type} as written would be outside what the "
                                                 f"token may write ({'&'.join('='.join(f) for f in filters)})")
        if patient is not None and not await in_patient_compartment(conn, req.resource_type, written_id, patient):
            raise FHIRError.of(403, "forbidden", f"The {req.resource_type} would be outside the compartment "
                                                 f"of Patient/{patient} that the token is limited to")
    return outcome
