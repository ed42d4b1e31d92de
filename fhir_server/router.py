"""The FHIR router: which interaction a method and path mean, for HTTP requests and Bundle entries alike."""

from urllib.parse import parse_qsl, unquote, urlsplit

from fhir_server.errors import FHIRError, Issue
from fhir_server.interactions import (capabilities, create, delete, history, patch, read, search, update)
from fhir_server.operations.registry import OPERATIONS, Handler
from fhir_server.request import FHIRRequest
from fhir_server.resource_types import require_known_type, require_valid_id

def parse_target(req: FHIRRequest, path: str) -> FHIRRequest:
    """Fill the type, id, version, operation and history/search fields of `req` from `path` (below the base)."""
    segments = [unquote(segment) for segment in path.strip("/").split("/")] if path.strip("/") else []
    if segments and segments[-1].startswith("$"):
        req.operation = segments.pop()[1:]
    if segments and segments[0] in ("metadata", "_history", "_search"):
        if len(segments) != 1:
            raise FHIRError.of(404, "not-found", f"No such endpoint: {path}")
        req.history = segments[0] == "_history"
        req.search = segments[0] == "_search"
        if segments[0] == "metadata":
            req.operation = "metadata"
        return req
    if segments:
        req.resource_type = require_known_type(segments[0])
    rest = segments[1:]
    if rest and rest[0] in ("_history", "_search"):
        req.history, req.search = rest[0] == "_history", rest[0] == "_search"
        rest = rest[1:]
        if rest:
            raise FHIRError.of(404, "not-found", f"No such endpoint: {path}")
        return req
    if rest:
        req.id = require_valid_id(rest[0])
        rest = rest[1:]
    if rest and rest[0] != "_history":
        return _parse_compartment_search(req, rest, path)
    if rest and rest[0] == "_history":
        req.history = True
        if len(rest) == 2:
            req.version_id, req.history = rest[1], False
        elif len(rest) > 2:
            raise FHIRError.of(404, "not-found", f"No such endpoint: {path}")
    elif rest:
        raise FHIRError.of(404, "not-found", f"No such endpoint: {path}")
    return req


def _parse_compartment_search(req: FHIRRequest, rest: list[str], path: str) -> FHIRRequest:
    """`Compartment/id/Type`, `Compartment/id/*`, and either with `/_search`."""
    if len(rest) > 2 or (len(rest) == 2 and rest[1] != "_search") or req.operation is not None:
        raise FHIRError.of(404, "not-found", f"No such endpoint: {path}")
    req.compartment_type = req.resource_type
    req.resource_type = None if rest[0] == "*" else require_known_type(rest[0])
    req.search = len(rest) == 2
    return req


def parse_entry_url(url: str, method: str, base_url: str) -> FHIRRequest:
    """A Bundle entry's request.url (relative to the base, or absolute below it) as a request."""
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    parts = urlsplit(url)
    req = FHIRRequest(method=method, base_url=base_url, query=parse_qsl(parts.query, keep_blank_values=True))
    return parse_target(req, parts.path)


def _method_not_allowed(req: FHIRRequest) -> FHIRError:
    return FHIRError.of(405, "not-supported", f"{req.method} is not allowed here")


def _operation(req: FHIRRequest) -> Handler:
    """The handler of the operation `req` invokes, after checking the invocation against its OperationDefinition:
    the level (system, type, instance) and resource type it is defined for, and the methods that level allows."""
    operation = OPERATIONS.get(req.operation)
    name = f"${req.operation}"
    if operation is None:
        raise FHIRError.of(404, "not-supported", f"The operation {name} is not known on this server")
    definition = operation.definition
    level = "system" if req.resource_type is None else "type" if req.id is None else "instance"
    if level not in definition.levels or (req.resource_type is not None
                                          and not definition.offered_on(req.resource_type)):
        where = {"system": name, "type": f"{req.resource_type}/{name}",
                 "instance": f"{req.resource_type}/[id]/{name}"}[level]
        types = ", ".join(sorted(definition.resource_types)) if definition.resource_types else "any type"
        raise FHIRError.of(404, "not-supported", f"{name} is not defined at the {level} level ({where}); it runs at "
                                                 f"the {' and '.join(sorted(definition.levels))} level on {types}")
    methods = definition.methods(level)
    if req.method not in methods:
        reason = "it changes data" if definition.affects_state else \
            f"its parameter(s) {', '.join(definition.complex_inputs(level))} cannot be given in a URL"
        raise FHIRError(405, [Issue("not-supported", f"{req.method} is not allowed for {name} at the {level} "
                                                     f"level: use {' or '.join(methods)}" +
                                    (f" ({reason})" if req.method == "GET" else ""))],
                        {"Allow": ", ".join(methods)})
    return operation.handler


def route(req: FHIRRequest) -> Handler:
    """The handler for `req`; Bundle posts to the base are routed by the caller (they need the router)."""
    method = req.method
    if req.operation == "metadata":
        if method != "GET":
            raise _method_not_allowed(req)
        return capabilities.capabilities
    if req.operation is not None:
        return _operation(req)
    if req.history:
        if method != "GET":
            raise _method_not_allowed(req)
        return history.history
    if req.compartment_type is not None:
        if method not in ("POST", "GET", "HEAD") or (method == "POST") != req.search:
            raise _method_not_allowed(req)
        return search.search
    if req.search:
        if method != "POST":
            raise _method_not_allowed(req)
        return search.search
    if req.version_id is not None:
        if method != "GET":
            raise _method_not_allowed(req)
        return read.vread
    if req.id is not None:
        handlers = {"GET": read.read, "HEAD": read.read, "PUT": update.update, "PATCH": patch.patch,
                    "DELETE": delete.delete}
    elif req.resource_type is not None:
        handlers = {"GET": search.search, "HEAD": search.search, "POST": create.create}
        if req.query:
            handlers |= {"PUT": update.conditional_update, "PATCH": patch.patch,
                         "DELETE": delete.conditional_delete}
    else:
        handlers = {"GET": search.search}
    handler = handlers.get(method)
    if handler is None:
        raise _method_not_allowed(req)
    return handler
