"""batch and transaction: a Bundle of requests, each entry routed like an HTTP request.

A transaction is one database transaction: entries run in the spec's order (DELETE, POST, PUT/PATCH,
GET/HEAD) after `urn:uuid:` fullUrls and conditional references have been resolved, and the first
failure rolls everything back. A batch runs each entry on its own savepoint.
"""

import base64
from http import HTTPStatus
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server import json_numbers
from fhir_server.errors import FHIRError, Issue
from fhir_server.identity import replaced
from fhir_server.identity.references import references
from fhir_server.interactions.common import matches_locked, parse_condition
from fhir_server.request import FHIRRequest, Outcome, error_outcome
from fhir_server.dispatch import dispatch
from fhir_server.router import parse_entry_url
from fhir_server.search.engine import find_matches
from fhir_server.settings import get_settings
from fhir_server.storage import repository
from fhir_server.storage.repository import instant

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
HEADERS = {"ifMatch": "if-match", "ifNoneMatch": "if-none-match", "ifNoneExist": "if-none-exist",
           "ifModifiedSince": "if-modified-since"}


def _entry_error(index: int, error: FHIRError) -> FHIRError:
    """The error of entry `index`, saying which entry failed."""
    where = f"Bundle.entry[{index}]"
    return FHIRError(error.status, [
        Issue(issue.code, f"{where}: {issue.diagnostics}", issue.severity, issue.expression or (where,))
        for issue in error.issues
    ], error.headers)


def _entry_list(bundle: dict[str, Any]) -> list[Any]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FHIRError.of(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
    limit = get_settings().max_bundle_entries
    if len(entries) > limit:
        raise FHIRError.of(413, "too-costly", f"The Bundle has {len(entries)} entries; this server accepts at "
                                              f"most {limit}", "Bundle.entry")
    return entries


def _parse_entries(bundle: dict[str, Any], outer: FHIRRequest) -> list[FHIRRequest]:
    """The entries as requests, made on behalf of the same caller as the Bundle."""
    prefer = outer.header("prefer")
    requests = []
    for index, entry in enumerate(_entry_list(bundle)):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("url"), str) \
                or request.get("method") not in ORDER:
            raise FHIRError.of(400, "structure", f"Bundle.entry[{index}] needs request.method (GET, HEAD, POST, "
                                                 "PUT, PATCH or DELETE) and request.url",
                               f"Bundle.entry[{index}].request")
        try:
            req = parse_entry_url(request["url"], request["method"], outer.base_url)
        except FHIRError as error:
            raise _entry_error(index, error) from None
        req.headers = {header: str(request[key]) for key, header in HEADERS.items() if request.get(key)}
        if prefer:
            req.headers["prefer"] = prefer
        req.principal = outer.principal
        req.audit = outer.audit
        req.body = entry.get("resource")
        if req.method == "PATCH":
            req.body = _patch_document(req.body, index)
        requests.append(req)
    return requests


def _patch_document(body: Any, index: int) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary resource (base64 data)."""
    if isinstance(body, dict) and body.get("resourceType") == "Binary" and body.get("data"):
        try:
            return json_numbers.loads(base64.b64decode(body["data"]))
        except ValueError:
            pass
    raise FHIRError.of(400, "structure", f"Bundle.entry[{index}]: a PATCH entry needs a Binary resource with "
                                         "contentType application/json-patch+json and the patch as data",
                       f"Bundle.entry[{index}].resource")


def _entry_response(outcome: Outcome, minimal: bool) -> dict[str, Any]:
    phrase = HTTPStatus(outcome.status).phrase
    response: dict[str, Any] = {"status": f"{outcome.status} {phrase}"}
    if outcome.location:
        response["location"] = outcome.location
    if outcome.etag:
        response["etag"] = outcome.etag
    if outcome.last_modified:
        response["lastModified"] = instant(outcome.last_modified)
    if outcome.status >= 400 and outcome.body:
        response["outcome"] = orjson.Fragment(outcome.body)
    entry: dict[str, Any] = {"response": response}
    if outcome.status < 400 and outcome.body and not minimal:
        entry["resource"] = orjson.Fragment(outcome.body)
    return entry


async def _assign_ids(conn: AsyncConnection, requests: list[FHIRRequest], bundle: dict[str, Any]) -> dict[str, str]:
    """Map each entry fullUrl to the `Type/id` it will have, assigning the ids of new resources."""
    mapping: dict[str, str] = {}
    for req, entry in zip(requests, bundle.get("entry") or []):
        full_url = entry.get("fullUrl")
        if req.method == "POST" and req.resource_type and req.operation is None and not req.search:
            fhir_id = None
            condition = req.header("if-none-exist")
            if condition:
                matches = await matches_locked(conn, req.resource_type, parse_condition(condition))
                if len(matches) == 1:
                    fhir_id = matches[0][1]
            if fhir_id is None:
                fhir_id = req.assigned_id = repository.new_id()
            if full_url:
                mapping[full_url] = f"{req.resource_type}/{fhir_id}"
        elif req.method == "PUT" and full_url and req.resource_type:
            if req.id is not None:
                mapping[full_url] = f"{req.resource_type}/{req.id}"
            elif isinstance(req.body, dict):
                matches = await matches_locked(conn, req.resource_type, req.query)
                if len(matches) == 1:
                    mapping[full_url] = f"{req.resource_type}/{matches[0][1]}"
                elif not matches:
                    req.body.setdefault("id", repository.new_id())
                    mapping[full_url] = f"{req.resource_type}/{req.body['id']}"
    return mapping


async def _resolve_references(conn: AsyncConnection, requests: list[FHIRRequest], mapping: dict[str, str]) -> None:
    """Rewrite references to entry fullUrls and conditional references (`Type?criteria`) to `Type/id`."""
    for index, req in enumerate(requests):
        for _, reference in references(req.body):
            target = reference["reference"]
            if target in mapping:
                reference["reference"] = mapping[target]
            elif target.startswith("urn:uuid:") or target.startswith("urn:oid:"):
                raise FHIRError.of(400, "not-found", f"Bundle.entry[{index}]: the reference '{target}' matches "
                                                     "no fullUrl in this Bundle", f"Bundle.entry[{index}].resource")
            elif "?" in target and not target.startswith("http"):
                resource_type = target.partition("?")[0]
                matches = await find_matches(conn, resource_type, parse_condition(target), limit=2)
                if len(matches) != 1:
                    raise FHIRError.of(412, "not-found" if not matches else "multiple-matches",
                                       f"Bundle.entry[{index}]: the conditional reference '{target}' matches "
                                       f"{len(matches)} resources; it must match exactly one",
                                       f"Bundle.entry[{index}].resource")
                reference["reference"] = f"{resource_type}/{matches[0][1]}"


async def transaction(conn: AsyncConnection, bundle: dict[str, Any], outer: FHIRRequest) -> Outcome:
    requests = _parse_entries(bundle, outer)
    mapping = await _assign_ids(conn, requests, bundle)
    await _resolve_references(conn, requests, mapping)
    await replaced.lock_patients_first(conn, [req.body for req in requests],
                                       [(req.resource_type, req.id) for req in requests
                                        if req.method in ("PUT", "PATCH", "DELETE") and req.resource_type and req.id],
                                       outer.base_url)
    outcomes: dict[int, Outcome] = {}
    deleted: list[tuple[str, str]] = []
    for index in sorted(range(len(requests)), key=lambda i: ORDER[requests[i].method]):
        req = requests[index]
        try:
            req.deferred_reference_check = True
            outcomes[index] = await dispatch(conn, req)
            deleted += req.deleted_targets
        except FHIRError as error:
            raise _entry_error(index, error) from None
    if get_settings().enforce_referential_integrity_on_delete:
        await repository.ensure_not_referenced(conn, deleted)
    return _response_bundle("transaction-response", [outcomes[i] for i in range(len(requests))],
                            outer.header("prefer"))


async def batch(conn: AsyncConnection, bundle: dict[str, Any], outer: FHIRRequest) -> Outcome:
    entries = _entry_list(bundle)
    outcomes = []
    for index, entry in enumerate(entries):
        try:
            async with conn.transaction():
                req = _parse_entries({"entry": [entry]}, outer)[0]
                outcomes.append(await dispatch(conn, req))
        except FHIRError as error:
            outcomes.append(error_outcome(_entry_error(index, error)))
    return _response_bundle("batch-response", outcomes, outer.header("prefer"))


def _response_bundle(bundle_type: str, outcomes: list[Outcome], prefer: str | None) -> Outcome:
    minimal = "return=minimal" in (prefer or "").replace(" ", "")
    body = {"resourceType": "Bundle", "type": bundle_type,
            "entry": [_entry_response(outcome, minimal) for outcome in outcomes]}
    return Outcome(200, orjson.dumps(body))


async def process(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    """POST [base] with a Bundle of type batch or transaction."""
    bundle = req.body
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FHIRError.of(400, "invalid", "POST to the base needs a Bundle of type batch or transaction")
    if bundle.get("type") == "transaction":
        return await transaction(conn, bundle, req)
    if bundle.get("type") == "batch":
        return await batch(conn, bundle, req)
    raise FHIRError.of(400, "invalid", f"Bundle.type must be batch or transaction, not {bundle.get('type')!r}",
                       "Bundle.type")

