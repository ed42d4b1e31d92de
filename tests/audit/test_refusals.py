"""Requests refused before any interaction ran (no valid token, unknown route, unusable body) are audited too,
through a real `fhir-server serve`, and the AuditEvents hold no secret."""

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from fhir_server.auth.keys import sign, signing_key
from fhir_server.auth.registry import add_client
from fhir_server.auth.grants import GrantedAccess
from fhir_server.auth.tokens import ACCESS_TOKEN_TYPE, access_token_claims
from tests.audit.conftest import wait_for_events
from tests.auth.test_enforcement import bearer
from tests.conftest import running_server

MAX_BODY = 4096
SECURITY_ALERT = "http://dicom.nema.org/resources/ontology/DCM|110113"


@pytest.fixture
def server(database_url: str, tmp_path: Path):
    """A real server requiring tokens, turning audit records into AuditEvents every 50 ms."""
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_AUTH": "smart", "FHIR_BACKGROUND": "in-process",
           "FHIR_AUDIT_FLUSH_SECONDS": "0.05", "FHIR_AUDIT_JOURNAL_DIR": str(tmp_path / "journal"),
           "FHIR_MAX_BODY_BYTES": str(MAX_BODY)}
    with running_server(env, tmp_path / "server.log") as origin:
        yield origin


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server + "/fhir", timeout=30) as client:
        yield client


async def _token(database_url: str, http: httpx.AsyncClient, scope: str) -> str:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        registered, secret = await add_client(conn, f"backend {secrets.token_hex(4)}", "confidential-symmetric",
                                              [], scope.split())
    response = await http.post(str(http.base_url).rstrip("/").removesuffix("/fhir") + "/auth/token",
                               data={"grant_type": "client_credentials", "scope": scope},
                               auth=(registered.client_id, secret))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def _expired_token(database_url: str, base: str) -> str:
    """A token this server signed, for it, that expired a minute ago."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        kid, key = await signing_key(conn, 30, 300)
    claims = access_token_claims(GrantedAccess("expired-app", None, ("system/*.cruds",)), base, 300)
    claims["exp"] = int(time.time()) - 60
    return sign(claims, ACCESS_TOKEN_TYPE, kid, key)


def _named(events: list[dict[str, Any]], requested: str) -> dict[str, Any]:
    """The event of the refused request `requested` ("METHOD /path")."""
    for event in events:
        if any(entity.get("name", "").startswith(requested) for entity in event.get("entity", [])):
            return event
    raise AssertionError(f"no AuditEvent for {requested}: {[e.get('entity') for e in events]}")


def _requestor(event: dict[str, Any]) -> dict[str, Any]:
    return next(agent for agent in event["agent"] if agent["requestor"])


async def test_requests_without_a_valid_token_are_audited_as_security_alerts(database_url: str,
                                                                             http: httpx.AsyncClient) -> None:
    auditor = bearer(await _token(database_url, http, "system/AuditEvent.rs"))
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.SECRET-forged-" + secrets.token_hex(8)
    expired = await _expired_token(database_url, str(http.base_url).rstrip("/"))
    missing = await http.get("/Patient/p-missing-token")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert (await http.get("/Observation?code=1234-5", headers=bearer(forged))).status_code == 401
    assert (await http.delete("/Patient/p-expired", headers=bearer(expired))).status_code == 401
    # refused before its body is read: malformed JSON from a caller without a token is a 401, not a 400
    unread = await http.post("/Patient", content=b"{not json", headers={**bearer(forged),
                                                                         "Content-Type": "application/fhir+json"})
    assert unread.status_code == 401

    events = await wait_for_events(http, f"type={SECURITY_ALERT}", 4, headers=auditor)
    assert len(events) == 4
    for event in events:
        assert event["outcome"] == "8" and event["outcomeDesc"].startswith("401: ")
        requestor = _requestor(event)
        assert "who" not in requestor  # nobody we know
        assert requestor["network"] == {"address": "127.0.0.1", "type": "2"}
    read = _named(events, "GET /fhir/Patient/p-missing-token")
    assert (read["subtype"][0]["code"], read["action"]) == ("read", "R")
    assert "Patient/p-missing-token" in [entity["what"]["reference"] for entity in read["entity"] if "what" in entity]
    search = _named(events, "GET /fhir/Observation?code=1234-5")
    assert search["subtype"][0]["code"] == "search-type" and "invalid" in search["outcomeDesc"].lower()
    deleted = _named(events, "DELETE /fhir/Patient/p-expired")
    assert deleted["action"] == "D" and "expired" in deleted["outcomeDesc"]
    assert _named(events, "POST /fhir/Patient")["subtype"][0]["code"] == "create"
    # an auditor finds them by the standard parameters too
    found = await http.get("/AuditEvent?outcome=8&address=127.0.0.1&subtype=delete&entity=Patient/p-expired",
                           headers=auditor)
    assert found.json()["total"] == 1
    # and no token, forged or real, is kept anywhere in the trail
    text = orjson.dumps(events).decode()
    assert "SECRET-forged" not in text and expired not in text and "Bearer" not in text
    assert expired.split(".")[2] not in text


async def test_unroutable_and_unusable_requests_are_audited(database_url: str, http: httpx.AsyncClient) -> None:
    writer = bearer(await _token(database_url, http, "system/Patient.cruds"))
    auditor = bearer(await _token(database_url, http, "system/AuditEvent.rs"))
    refusals = {
        "GET /fhir/Spaceship/1": (await http.get("/Spaceship/1", headers=writer), 404),
        "GET /fhir/Patient/1/_history/1/extra": (await http.get("/Patient/1/_history/1/extra", headers=writer),
                                                 404),
        "DELETE /fhir/Patient": (await http.delete("/Patient", headers=writer), 405),
        "POST /fhir/Patient": (await http.post("/Patient", content=b"{" + b" " * MAX_BODY + b"}", headers={
            **writer, "Content-Type": "application/fhir+json"}), 413),
        "PUT /fhir/Patient/xml": (await http.put("/Patient/xml", content=b"<Patient/>", headers={
            **writer, "Content-Type": "application/fhir+xml"}), 415),
        "PATCH /fhir/Patient/bad-json": (await http.patch("/Patient/bad-json", content=b"[{", headers={
            **writer, "Content-Type": "application/json-patch+json"}), 400),
        # refused before dispatch by the token's scopes: a raw Binary upload needs Binary create
        "POST /fhir/Binary": (await http.post("/Binary", content=b"hello", headers={
            **writer, "Content-Type": "text/plain"}), 403),
    }
    for requested, (response, status) in refusals.items():
        assert response.status_code == status, (requested, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"

    events = await wait_for_events(http, "entity-name:contains=/fhir/", len(refusals), headers=auditor)
    assert len(events) == len(refusals)
    for requested, (_, status) in refusals.items():
        event = _named(events, requested)
        assert event["outcomeDesc"].startswith(f"{status}: "), requested
        assert event["outcome"] == ("8" if status == 403 else "4"), requested
        assert event["type"]["code"] == ("110113" if status == 403 else "rest"), requested
        client = next(agent for agent in event["agent"] if agent["type"]["coding"][0]["code"] == "110153")
        assert client["network"]["address"] == "127.0.0.1" and client["who"]["identifier"]["value"], requested
    assert _named(events, "PUT /fhir/Patient/xml")["action"] == "U"
    assert _named(events, "DELETE /fhir/Patient")["action"] == "D"


async def test_a_flood_of_bad_tokens_is_audited_once_per_request(database_url: str,
                                                                 http: httpx.AsyncClient) -> None:
    auditor = bearer(await _token(database_url, http, "system/AuditEvent.rs"))
    flood = 200

    async def knock(n: int) -> int:
        return (await http.get(f"/Patient/flood-{n}", headers=bearer(f"bad-token-{n}"))).status_code

    assert set(await asyncio.gather(*(knock(n) for n in range(flood)))) == {401}
    total = 0
    for _ in range(300):
        total = (await http.get(f"/AuditEvent?type={SECURITY_ALERT}&_summary=count",
                                headers=auditor)).json()["total"]
        if total >= flood:
            break
        await asyncio.sleep(0.1)
    assert total == flood
    found = await http.get(f"/AuditEvent?type={SECURITY_ALERT}&_count=500", headers=auditor)
    assert "bad-token" not in found.text
