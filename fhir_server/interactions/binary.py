"""Binary with its raw content: create and update from the bytes of an allowed type, read as bytes or as FHIR JSON.

`POST [base]/Binary` and `PUT [base]/Binary/[id]` with any Content-Type but FHIR JSON stream the body to the
object store (hashing it on the way, within FHIR_DOCUMENT_MAX_BYTES) and store a Binary that points at it;
`X-Security-Context` sets Binary.securityContext. `GET [base]/Binary/[id]` answers the bytes unless FHIR
JSON is asked for, then the Binary with `data` filled in from the store. Reading is authorized by the
Binary's securityContext: the caller needs read access to that resource (the same dispatch check as reading
it), and a Binary without one is not in any patient's compartment. Under patient/ scopes an upload is
allowed when its securityContext is in the token patient's compartment. FHIR JSON writes go the usual
way; `documents.hooks` moves their `data` to the store.
"""

import asyncio
import base64
from functools import partial

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from fhir_server import json_numbers
from fhir_server.audit.interceptor import audited
from fhir_server.auth.enforce import in_patient_compartment, not_found
from fhir_server.dispatch import dispatch
from fhir_server.documents import content as received
from fhir_server.documents import hooks, objects
from fhir_server.documents.mime import require_allowed, require_signature
from fhir_server.documents.references import content_hash, set_content_hash
from fhir_server.documents.responses import ContentOutcome, content_response
from fhir_server.documents.store import object_store
from fhir_server.errors import FHIRError
from fhir_server.interactions import read
from fhir_server.operations import document_download
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.settings import Settings
from fhir_server.storage import repository

FHIR_JSON = frozenset({"application/fhir+json", "application/json", "application/json+fhir", "json"})


def _is_fhir_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in FHIR_JSON


def takes(req: FHIRRequest) -> bool:
    """Whether the request is for raw document bytes (this module) rather than the FHIR JSON path."""
    if req.resource_type == "DocumentReference":
        return req.operation == document_download.DEFINITION.code and req.id is not None and req.method in ("GET", "POST")
    if req.resource_type != "Binary" or req.operation or req.history or req.search or req.compartment_type:
        return False
    if req.method == "GET":
        return req.id is not None
    content_type = req.header("content-type")
    if req.method == "POST":
        return req.id is None and not req.query and not _is_fhir_json(content_type)
    return req.method == "PUT" and req.id is not None and not _is_fhir_json(content_type)


def _wants_resource(request: Request) -> bool:
    """FHIR JSON only when asked for by name; `*/*`, no Accept or the stored type get the bytes."""
    requested = request.query_params.getlist("_format")
    if requested:
        return _is_fhir_json(requested[-1])
    return any(_is_fhir_json(part) for part in (request.headers.get("accept") or "").split(","))


async def handle(pool: AsyncConnectionPool, request: Request, req: FHIRRequest, settings: Settings
                 ) -> Response | Outcome:
    if req.resource_type == "DocumentReference":
        async with pool.connection() as conn:
            outcome = await dispatch(conn, req)
        if isinstance(outcome, ContentOutcome):
            return await content_response(outcome, object_store(settings))
        return outcome
    if req.method == "GET":
        return await _read(pool, request, req, settings)
    return await _write(pool, request, req, settings)


async def authorize_read(conn: AsyncConnection, req: FHIRRequest) -> None:
    """The caller may read this Binary version: a Binary grant, and read access to its securityContext."""
    principal = req.principal
    patient = principal.restriction("Binary", "r")  # 403 without a grant on Binary
    version = int(req.version_id) if req.version_id and req.version_id.isdigit() else None
    stored = await (repository.vread(conn, "Binary", req.id, version) if version
                    else repository.read(conn, "Binary", req.id))
    if stored is None or stored.deleted:
        return  # the read itself answers 404 or 410
    context = (stored.json().get("securityContext") or {}).get("reference") or ""
    context_type, _, context_id = context.partition("/")
    if not context_id or "/" in context_id:
        if patient is not None:
            raise not_found("Binary", req.id)  # in no patient's compartment
        return
    try:
        await dispatch(conn, FHIRRequest("GET", req.base_url, context_type, context_id, principal=principal))
    except FHIRError as error:
        if error.status in (404, 410):
            raise not_found("Binary", req.id) from None
        raise FHIRError.of(error.status, "forbidden", f"Reading Binary/{req.id} needs read access to its "
                                                      f"securityContext {context}") from None


async def _read_authorized(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    if req.principal is not None:
        await authorize_read(conn, req)
    return await (read.vread if req.version_id is not None else read.read)(conn, req)


async def _read(pool: AsyncConnectionPool, request: Request, req: FHIRRequest, settings: Settings
                ) -> Response | Outcome:
    async with pool.connection() as conn:
        # Raw reads bypass dispatch (the bytes are streamed), so they meet the audit interceptor here.
        outcome = await audited(conn, req, "vread" if req.version_id is not None else "read",
                                partial(_read_authorized, conn, req))
        if outcome.status != 200:
            return outcome  # 304
        binary = json_numbers.loads(outcome.body)
        sha256 = content_hash(binary)
        stored = await objects.lookup(conn, sha256) if sha256 else None
    store = object_store(settings)
    if _wants_resource(request):
        if sha256 is not None:
            data = b"".join(await asyncio.to_thread(lambda: list(store.open(sha256))))
            binary["data"] = base64.b64encode(data).decode()
            outcome.body = json_numbers.dumps(binary)
        return outcome
    content_type = binary.get("contentType") or "application/octet-stream"
    if sha256 is None:
        return Response(b"", 200, outcome.response_headers(), media_type=content_type)
    return await content_response(ContentOutcome(200, etag=outcome.etag, last_modified=outcome.last_modified,
                                                 sha256=sha256, content_type=content_type,
                                                 size=stored.size if stored else None), store)


async def _require_patient_context(pool: AsyncConnectionPool, context: str | None, patient: str) -> None:
    """Under patient/ scopes an upload is the patient's only through its securityContext (dispatch checks the
    stored Binary again; this spares streaming bytes that would be refused)."""
    context_type, _, context_id = (context or "").strip().partition("/")
    if context_id:
        async with pool.connection() as conn:
            if await in_patient_compartment(conn, context_type, context_id, patient):
                return
    raise FHIRError.of(403, "forbidden", "Under patient/ scopes a Binary needs an X-Security-Context header naming "
                                         f"a resource in the compartment of Patient/{patient}")


async def _write(pool: AsyncConnectionPool, request: Request, req: FHIRRequest, settings: Settings) -> Outcome:
    if req.principal is not None:  # refuse before reading megabytes that could not be stored
        patient = req.principal.restriction("Binary", "c" if req.method == "POST" else "u")
        if patient is not None:
            await _require_patient_context(pool, request.headers.get("x-security-context"), patient)
    content_type = (request.headers.get("content-type") or "").strip()
    media = require_allowed(content_type, settings.document_mime_types)
    limit = settings.document_max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise received.too_large(limit)
    content = await received.receive(request.stream(), limit, partial(require_signature, media))
    try:
        async with pool.connection() as conn:
            await objects.save(conn, object_store(settings), content, media)  # committed before the resource
            binary = {"resourceType": "Binary", **({"id": req.id} if req.id else {}), "contentType": content_type}
            security_context = request.headers.get("x-security-context")
            if security_context:
                binary["securityContext"] = {"reference": security_context.strip()}
            set_content_hash(binary, content.sha256)
            req.body = binary
            token = hooks.uploaded.set(hooks.uploaded.get() | {content.sha256})
            try:
                async with conn.transaction():
                    return await dispatch(conn, req)
            finally:
                hooks.uploaded.reset(token)
    finally:
        content.close()
