"""AuditEvents are written by the server only, and read only by callers granted the audit trail."""

import base64
import json
import secrets

import httpx
import psycopg
import pytest

from fhir_server.auth.registry import add_client, add_user
from tests.audit.conftest import wait_for_events
from tests.auth.test_enforcement import bearer, patient_token, system_token

EVENT = {"resourceType": "AuditEvent", "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                                                "code": "rest"},
         "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": True}], "source": {"observer": {"display": "x"}}}


@pytest.fixture
async def aconn(database_url: str):
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 405, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_audit_events_cannot_be_written_through_the_api(audited_client) -> None:
    async with audited_client() as client:
        await client.get("/Patient/someone")
        event_id = (await wait_for_events(client, "entity=Patient/someone"))[0]["id"]
        _refused(await client.post("/AuditEvent", json=EVENT))
        _refused(await client.put(f"/AuditEvent/{event_id}", json={**EVENT, "id": event_id}))
        _refused(await client.put("/AuditEvent/new-one", json={**EVENT, "id": "new-one"}))
        _refused(await client.patch(f"/AuditEvent/{event_id}", content=json.dumps(
            [{"op": "replace", "path": "/outcome", "value": "0"}]), headers={"Content-Type": "application/json-patch+json"}))
        _refused(await client.delete(f"/AuditEvent/{event_id}"))
        _refused(await client.delete("/AuditEvent?entity=Patient/someone"))
        transaction = await client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": f"AuditEvent/{event_id}"}}]})
        assert transaction.status_code == 405 and transaction.json()["resourceType"] == "OperationOutcome"
        batch = await client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": EVENT, "request": {"method": "POST", "url": "AuditEvent"}}]})
        assert batch.json()["entry"][0]["response"]["status"].startswith("405")
        stored = await client.get(f"/AuditEvent/{event_id}")
        assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == "1"
        assert (await client.get("/Patient")).json()["total"] == 0  # the transaction wrote nothing
        assert (await client.get("/AuditEvent?subtype=create&outcome=0")).json()["total"] == 0


async def test_reading_the_audit_trail_needs_a_scope_naming_it(audited_client, aconn) -> None:
    async with audited_client(FHIR_AUTH="smart") as client:
        everything = bearer(await system_token(aconn, client, "system/*.cruds"))
        auditor = bearer(await system_token(aconn, client, "system/*.rs system/AuditEvent.rs"))
        narrow = bearer(await system_token(aconn, client, "system/AuditEvent.rs"))
        pid = (await client.post("/Patient", json={"resourceType": "Patient"}, headers=everything)).json()["id"]
        events = await wait_for_events(client, f"entity=Patient/{pid}", headers=auditor)
        event_id = events[0]["id"]
        # wildcards do not cover AuditEvent: search, read, history, system-wide views, includes
        for path in ("/AuditEvent", f"/AuditEvent/{event_id}", f"/AuditEvent/{event_id}/_history",
                     "/AuditEvent/_history", "/?_id=x", "/?_type=AuditEvent,Patient"):
            response = await client.get(path, headers=everything)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["resourceType"] == "OperationOutcome"
        history = await client.get("/_history", headers=everything)
        assert history.status_code == 200 and "AuditEvent" not in history.text
        compartment = await client.get(f"/Patient/{pid}/*", headers=everything)
        assert compartment.status_code == 403, compartment.text
        record = await client.get(f"/Patient/{pid}/$everything", headers=everything)
        assert [entry["resource"]["resourceType"] for entry in record.json()["entry"]] == ["Patient"]
        assert (await client.get(f"/Patient/{pid}/$everything?_type=AuditEvent", headers=everything)).status_code == 403
        included = await client.get(f"/Patient?_id={pid}&_revinclude=AuditEvent:entity", headers=everything)
        assert [entry["resource"]["resourceType"] for entry in included.json()["entry"]] == ["Patient"]
        # the auditor reads all of it
        assert "AuditEvent" in (await client.get("/_history?_count=500", headers=auditor)).text
        for path in (f"/AuditEvent/{event_id}", f"/AuditEvent/{event_id}/_history", "/_history",
                     "/?_type=AuditEvent", f"/Patient/{pid}/*", f"/Patient/{pid}/$everything?_type=AuditEvent"):
            assert (await client.get(path, headers=auditor)).status_code == 200, path
        assert (await client.get(f"/AuditEvent?entity=Patient/{pid}", headers=narrow)).json()["total"] >= 1
        assert (await client.get(f"/Patient/{pid}", headers=narrow)).status_code == 403
        included = await client.get(f"/Patient?_id={pid}&_revinclude=AuditEvent:entity", headers=auditor)
        assert "AuditEvent" in {entry["resource"]["resourceType"] for entry in included.json()["entry"]}
        # and nobody writes it, not even with a scope naming it
        writer = bearer(await system_token(aconn, client, "system/AuditEvent.cruds"))
        assert (await client.delete(f"/AuditEvent/{event_id}", headers=writer)).status_code == 405
        assert (await client.post("/AuditEvent", json=EVENT, headers=writer)).status_code == 405


async def test_agents_name_the_client_and_the_user(audited_client, aconn) -> None:
    async with audited_client(FHIR_AUTH="smart") as client:
        admin = bearer(await system_token(aconn, client, "system/*.cruds system/AuditEvent.rs"))
        pid = (await client.post("/Patient", json={"resourceType": "Patient"}, headers=admin)).json()["id"]
        user_token = await patient_token(aconn, client, pid, "patient/Patient.rs")
        claims = json.loads(base64.urlsafe_b64decode(user_token.split(".")[1] + "=="))
        assert (await client.get(f"/Patient/{pid}", headers=bearer(user_token))).status_code == 200
        events = await wait_for_events(client, f"entity=Patient/{pid}&subtype=read", headers=admin)
        agents = events[0]["agent"]
        client_agent = next(a for a in agents if a["type"]["coding"][0]["code"] == "110153")
        user_agent = next(a for a in agents if a["type"]["coding"][0]["code"] == "IRCP")
        assert client_agent["who"]["identifier"]["value"] == claims["client_id"]
        assert client_agent["requestor"] is False and client_agent["network"]["address"] == "127.0.0.1"
        assert user_agent["requestor"] is True and user_agent["altId"] == claims["sub"]
        assert user_agent["who"] == {"reference": claims["fhirUser"]}
        # searchable by agent and by the user's name
        assert await wait_for_events(client, f"agent={claims['fhirUser']}&subtype=read", headers=admin)
        assert await wait_for_events(client, f"altid={claims['sub']}", headers=admin)
        # a backend client (no user) is itself the requestor
        created = await wait_for_events(client, f"entity=Patient/{pid}&subtype=create", headers=admin)
        backend = created[0]["agent"][0]
        assert backend["requestor"] is True and backend["who"]["identifier"]["system"] == "urn:fhir-server:client"
