"""The FastAPI application: content negotiation, body limits, routing to interactions, OperationOutcome errors."""

import asyncio
import logging
import random
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import parse_qsl
from uuid import uuid4

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from fhir_server import json_numbers
from fhir_server.api.cors import with_cors
from fhir_server.audit.interceptor import AuditContext, refused
from fhir_server.audit.journal import Journal
from fhir_server.auth.enforce import Principal
from fhir_server.auth.server import auth_router
from fhir_server.dispatch import dispatch, requested_kind
from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.interactions import binary, create, patch, transaction, update
from fhir_server.interactions.capabilities import capability_statement
from fhir_server.messaging.webhooks import twilio_routes
from fhir_server.request import JSON_CONTENT_TYPE, FHIRRequest, Outcome, error_outcome, informational
from fhir_server.resource_types import resource_types
from fhir_server.router import Handler, parse_target, route
from fhir_server.search.parameters import search_parameters
from fhir_server.search.reindex import load_stored_search_parameters
from fhir_server.settings import Settings, get_settings
from fhir_server.storage import tenants
from fhir_server.storage.database import ROLLED_BACK, create_pool
from fhir_server.validation import validate_resource
from fhir_server.worker.runtime import BackgroundWork, in_process

log = logging.getLogger("fhir_server")

JSON_TYPES = frozenset({"application/fhir+json", "application/json", "json", "application/json+fhir"})
ACCEPTABLE = JSON_TYPES | {"*/*", "application/*"}
PRESENTATION_PARAMETERS = frozenset({"_format", "_pretty"})
# Below a tenant's base, the first segments served by the FastAPI routes rather than the FHIR API.
TENANT_APP_ROUTES = frozenset({".well-known", "auth", "twilio"})
WRITE_HANDLERS = frozenset({create.create, update.update, update.conditional_update, patch.patch})
TRANSACTION_ATTEMPTS = 4


def _media_types(header: str) -> list[str]:
    """The media ranges of an Accept header that have a non-zero quality."""
    types = []
    for part in header.split(","):
        media, *params = [piece.strip() for piece in part.split(";")]
        if any(param.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for param in params):
            continue
        types.append(media.lower())
    return types


def _negotiate(request: Request) -> None:
    """406 unless the client accepts JSON: this server speaks FHIR JSON only."""
    requested = request.query_params.getlist("_format")
    if requested:
        if requested[-1].split(";")[0].strip().lower() not in JSON_TYPES:
            raise FHIRError.of(406, "not-supported", f"_format={requested[-1]} is not supported; "
                                                     "this server returns application/fhir+json only", "_format")
        return
    accept = request.headers.get("accept")
    if accept and not any(media in ACCEPTABLE for media in _media_types(accept)):
        raise FHIRError.of(406, "not-supported", f"Cannot answer in {accept}; this server returns "
                                                 "application/fhir+json only")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FHIRError.of(413, "too-costly", f"The body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FHIRError.of(413, "too-costly", f"The body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(req: FHIRRequest, content_type: str, raw: bytes) -> Any:
    media = content_type.split(";")[0].strip().lower()
    if req.search and media == "application/x-www-form-urlencoded":
        req.query += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return None
    if not raw.strip():
        return None
    if media and (media.endswith("xml") or media.endswith("+xml")):
        raise FHIRError.of(415, "not-supported", f"Content-Type {media} is not supported; send application/fhir+json")
    allowed = JSON_TYPES | ({"application/json-patch+json"} if req.method == "PATCH" else set())
    if media and media not in allowed:
        raise FHIRError.of(415, "not-supported", f"Content-Type {media} is not supported here; send "
                                                 + " or ".join(sorted(allowed - {"json", "application/json+fhir"})))
    try:
        return json_numbers.loads(raw)  # decimals as written, in resources and operation parameters alike
    except orjson.JSONDecodeError as error:
        raise FHIRError.of(400, "structure", f"The body is not valid JSON: {error}") from None


def _base_url(request: Request, settings: Settings) -> str:
    return f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}" \
           f"{tenants.base_path(settings.base_path)}"


def _render(req: FHIRRequest | None, outcome: Outcome, request: Request, write: bool) -> Response:
    body = outcome.body
    headers = outcome.response_headers()
    if write and req is not None and outcome.status < 300:
        returned = req.prefer("return")
        if returned == "minimal":
            body = None
        elif returned == "operationoutcome":
            body = informational(f"{req.method} succeeded with status {outcome.status}").body
    if outcome.status in (204, 304) or request.method == "HEAD":
        body = None
    elif body is not None and request.query_params.get("_pretty") == "true":
        body = json_numbers.dumps(json_numbers.loads(body), option=orjson.OPT_INDENT_2)
    media = JSON_CONTENT_TYPE
    requested = request.query_params.get("_format") or request.headers.get("accept") or ""
    if "fhir" not in requested and ("application/json" in requested or requested == "json"):
        media = "application/json; charset=utf-8"
    return Response(body, outcome.status, headers, media_type=media if body is not None else None)


def _new_request(request: Request, settings: Settings, journal: Journal | None) -> FHIRRequest:
    """The request before its path is parsed (`parse_target`), so that one refused for its path is audited."""
    return FHIRRequest(method=request.method, base_url=_base_url(request, settings),
                       query=[(key, value) for key, value in request.query_params.multi_items()
                              if key not in PRESENTATION_PARAMETERS],
                       headers={key.lower(): value for key, value in request.headers.items()},
                       audit=AuditContext(request.client.host if request.client else None, journal,
                                          settings.audit_reads))


def _needs_transaction(req: FHIRRequest, handler: Handler) -> bool:
    """Whether the handler must run inside BEGIN ... COMMIT. Reads are single statements; so is a plain create
    (one INSERT with CTEs that also stores its audit record, storage/repository.py), atomic on its own in
    autocommit mode, two round trips fewer on the hottest write. A create that must write more opens its
    transaction itself (interactions/create.py, repository.create); an X-Provenance and a create confined to a
    patient's compartment or to a v2 scope's query (both checked after the write) need one too."""
    if req.method in ("GET", "HEAD"):
        return False
    return not (handler is create.create and "if-none-exist" not in req.headers
                and "x-provenance" not in req.headers
                and (req.principal is None or not (req.principal.token.patient
                                                   or any(grant.filters for grant in req.principal.grants))))


class FHIRApplication:
    """The ASGI entry point: requests below the FHIR base go straight to `handle` (no framework routing on
    the hot path); everything else, and the lifespan, goes to the FastAPI app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_path = settings.base_path
        self.multi_tenant = settings.tenancy == "url"
        self.fastapi = FastAPI(title="fhir-server", lifespan=self.lifespan, docs_url=None, redoc_url=None,
                               openapi_url=None)
        self.fastapi.add_exception_handler(StarletteHTTPException, _http_error)
        self.fastapi.include_router(auth_router(self))
        self.fastapi.include_router(twilio_routes(self))  # Twilio webhooks, outside the FHIR base
        self.pool = None
        self.background: BackgroundWork | None = None
        self.journal: Journal | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        # Load the conformance data before the first request rather than on it.
        resource_types()
        search_parameters()
        validate_resource({"resourceType": "Patient"})
        capability_statement()
        self.pool = create_pool(self.settings.database_url, self.settings.db_pool_size, self.settings.tenancy)
        await self.pool.open(wait=True)
        for tenant in await self.pool.all_tenants() if self.multi_tenant else [None]:
            selected = tenants.current.set(tenant)
            try:
                async with self.pool.connection() as conn:  # custom SearchParameters stored on this server
                    await load_stored_search_parameters(conn)
            finally:
                tenants.current.reset(selected)
        self.journal = Journal(self.settings.audit_journal_dir or self.settings.data_dir / "audit", self.pool,
                               self.settings.audit_flush_seconds)
        await self.journal.start()
        if in_process(self.settings):  # the embedded default: this process also relays and delivers
            self.background = BackgroundWork(self.settings, self.pool, self.journal)
            await self.background.start()
        yield
        if self.background is not None:
            await self.background.stop()
        await self.journal.stop()
        await self.pool.close()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.multi_tenant and scope["type"] == "http":
            await self._call_tenant(scope, receive, send)
            return
        if scope["type"] == "http":
            path = scope["path"]
            if (path == self.base_path or path.startswith(self.base_path + "/")) \
                    and not path.startswith(self.base_path + "/.well-known/"):
                request = Request(scope, receive)
                response = await self.handle(request, path[len(self.base_path):])
                await response(scope, receive, send)
                return
        await self.fastapi(scope, receive, send)

    async def _call_tenant(self, scope: dict, receive: Any, send: Any) -> None:
        """FHIR_TENANCY=url: everything is below base/{tenant}; the tenant is selected for the whole request
        (`tenants.current`, which scopes every connection) and its base is the root of the rest of the path."""
        path = scope["path"]
        name, _, rest = path[len(self.base_path) + 1:].partition("/") if path.startswith(self.base_path + "/") \
            else ("", "", "")
        try:
            tenant = await self.pool.resolve(name) if name else None
        except tenants.UnknownTenant:
            tenant = None
        if tenant is None:
            message = f"No tenant {name!r} on this server" if name else \
                f"This server has tenants: address one at {self.base_path}/{{tenant}}"
            await Response(orjson.dumps(operation_outcome([Issue("not-found", message)])), 404,
                           media_type=JSON_CONTENT_TYPE)(scope, receive, send)
            return
        selected = tenants.current.set(tenant)
        try:
            root = f"{self.base_path}/{name}"
            if rest.split("/", 1)[0] in TENANT_APP_ROUTES:  # the authorization server and webhooks
                await self.fastapi({**scope, "root_path": scope.get("root_path", "") + root}, receive, send)
                return
            response = await self.handle(Request(scope, receive), path[len(root):])
            await response(scope, receive, send)
        finally:
            tenants.current.reset(selected)

    async def handle(self, request: Request, path: str) -> Response:
        req = _new_request(request, self.settings, self.journal)
        handler = None
        write = False
        try:
            parse_target(req, path)
            if binary.takes(req):  # raw document bytes in or out: streamed, not through the JSON body path
                return await self._documents(request, req)
            _negotiate(request)
            if req.resource_type is None and req.compartment_type is None and req.operation is None \
                    and not req.history and not req.search and request.method == "POST":
                handler = transaction.process
            else:
                handler = route(req)
            write = handler in WRITE_HANDLERS
            if self.settings.auth == "smart" and req.operation != "metadata":
                # Before the body is read: a caller without a valid token costs no parsing of what it sent.
                req.principal = await self._authenticate(request, req)
            raw = None
            if request.method in ("POST", "PUT", "PATCH"):
                raw = await _read_body(request, self.settings.max_body_bytes)
                req.body = _parse_body(req, request.headers.get("content-type", ""), raw)
            outcome = await self._run(req, handler, partial(self._again, request, path, raw, req.principal))
        except FHIRError as error:
            outcome = error_outcome(error)
            await self._refused(request, req, handler, error)
        except (psycopg.errors.LockNotAvailable, *ROLLED_BACK) as error:
            log.info("%s %s gave up on a lock: %s", request.method, request.url.path, error)
            outcome = error_outcome(FHIRError.of(409, "lock-error", "Another transaction holds resources this request "
                                                                    "must change; try again later"))
        except Exception:
            request_id = uuid4().hex
            log.exception("request %s failed: %s %s", request_id, request.method, request.url.path)
            outcome = Outcome(500, orjson.dumps(operation_outcome([Issue(
                "exception", f"Internal server error; quote request id {request_id} to the operator")])),
                headers={"X-Request-Id": request_id})
        return _render(req, outcome, request, write)

    async def _run(self, req: FHIRRequest, handler: Handler, again: Callable[[], FHIRRequest]) -> Outcome:
        """The interaction, in one database transaction when it writes. PostgreSQL breaks a deadlock between
        transactions (locks taken in different orders, e.g. a Bundle against a $merge) by rolling one back:
        that one runs again from the start, on a fresh copy of the request (`again`), a few times."""
        run = partial(dispatch, handler=handler)
        attempt = 1
        while True:
            try:
                async with self.pool.connection() as conn:
                    if not _needs_transaction(req, handler):
                        return await run(conn, req)
                    async with conn.transaction():
                        return await run(conn, req)
            except ROLLED_BACK as error:
                if attempt == TRANSACTION_ATTEMPTS:
                    raise
                log.info("%s %s rolled back (%s); running it again", req.method, req.resource_type or "", error)
                await asyncio.sleep(random.uniform(0, 0.05 * attempt))
                req = again()
                attempt += 1

    def _again(self, request: Request, path: str, raw: bytes | None, principal: Principal | None) -> FHIRRequest:
        req = parse_target(_new_request(request, self.settings, self.journal), path)
        if raw is not None:
            req.body = _parse_body(req, request.headers.get("content-type", ""), raw)
        req.principal = principal
        return req

    async def _refused(self, request: Request, req: FHIRRequest, handler: Handler | None, error: FHIRError) -> None:
        """Audit a request refused before it reached an interaction (whose interceptor audits its own failures);
        one refused before its token was checked (unknown route, 405) still names a caller whose token is valid."""
        if req.audit.entered:
            return
        if req.principal is None and self.settings.auth == "smart" and error.status != 401:
            with suppress(FHIRError):
                req.principal = await self._authenticate(request, req)
        refused(req, requested_kind(req, handler), error, f"{request.method} {request.url.path}")

    async def _documents(self, request: Request, req: FHIRRequest) -> Response:
        if self.settings.auth == "smart":
            req.principal = await self._authenticate(request, req)
        result = await binary.handle(self.pool, request, req, self.settings)
        return result if isinstance(result, Response) else _render(req, result, request, req.method != "GET")

    async def _authenticate(self, request: Request, req: FHIRRequest) -> Principal:
        """The caller of a bearer token, or 401 with a WWW-Authenticate challenge (RFC 6750)."""
        from fhir_server.auth.tokens import InvalidToken, verify_access_token

        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        challenge = 'Bearer realm="fhir-server"'
        if scheme.lower() != "bearer" or not token.strip():
            raise FHIRError(401, [Issue("login", "This server requires a SMART bearer token")],
                            {"WWW-Authenticate": challenge})
        try:
            access = await verify_access_token(self.pool, token.strip(), req.base_url)
        except InvalidToken as error:
            raise FHIRError(401, [Issue("login", f"Invalid bearer token: {error}")],
                            {"WWW-Authenticate": f'{challenge}, error="invalid_token"'}) from None
        return Principal.of(access)


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    body = orjson.dumps(operation_outcome([Issue("not-found" if error.status_code == 404 else "processing",
                                                 str(error.detail))]))
    return Response(body, error.status_code, media_type=JSON_CONTENT_TYPE)


def create_app() -> ASGIApp:
    settings = get_settings()
    return with_cors(FHIRApplication(settings), settings)
