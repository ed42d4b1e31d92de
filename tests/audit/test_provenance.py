"""X-Provenance: the client's Provenance is stored with every version the request wrote as its target."""

import json

import httpx
import psycopg
import pytest

PROVENANCE = {"resourceType": "Provenance", "recorded": "2026-11-01T10:00:00Z",
              "agent": [{"who": {"reference": "Practitioner/dr-who"}}],
              "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                       "code": "CREATE"}]}}


def _header(provenance: dict) -> dict[str, str]:
    return {"X-Provenance": json.dumps(provenance)}


async def _provenances(client: httpx.AsyncClient, target: str) -> list[dict]:
    found = await client.get(f"/Provenance?target={target}")
    return [entry["resource"] for entry in found.json().get("entry", [])]


async def test_a_write_with_x_provenance_stores_it_with_the_version_written(configured_client) -> None:
    async with configured_client() as client:
        created = await client.post("/Patient", json={"resourceType": "Patient"}, headers=_header(PROVENANCE))
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        updated = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True},
                                   headers=_header({**PROVENANCE, "target": [{"reference": "Patient/spoofed"}]}))
        assert updated.status_code == 200
        provenances = await _provenances(client, f"Patient/{pid}")
        assert sorted(target["reference"] for provenance in provenances for target in provenance["target"]) == \
            [f"Patient/{pid}/_history/1", f"Patient/{pid}/_history/2"]
        assert all(provenance["agent"] == PROVENANCE["agent"] for provenance in provenances)
        assert (await _provenances(client, "Patient/spoofed")) == []


async def test_a_transaction_provenance_targets_every_version_it_wrote(configured_client) -> None:
    async with configured_client() as client:
        existing = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "active": True}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": existing, "active": False},
             "request": {"method": "PUT", "url": f"Patient/{existing}"}},
            {"request": {"method": "GET", "url": f"Patient/{existing}"}}]}
        response = await client.post("", json=bundle, headers=_header(PROVENANCE))
        assert response.status_code == 200, response.text
        written = [entry["response"]["location"].removeprefix("http://test/fhir/")
                   for entry in response.json()["entry"][:1]] + [f"Patient/{existing}/_history/2"]
        provenances = await _provenances(client, f"Patient/{existing}")
        assert len(provenances) == 1
        assert sorted(target["reference"] for target in provenances[0]["target"]) == sorted(written)


@pytest.mark.parametrize("value", ["not json", json.dumps({"resourceType": "Patient"}),
                                   json.dumps({"resourceType": "Provenance", "recorded": "2026-01-01T00:00:00Z"}),
                                   json.dumps({**PROVENANCE, "recorded": "yesterday"})])
async def test_an_invalid_x_provenance_is_400_and_nothing_is_written(configured_client, value: str) -> None:
    async with configured_client() as client:
        created = await client.post("/Patient", json={"resourceType": "Patient"}, headers={"X-Provenance": value})
        assert created.status_code == 400, created.text
        assert created.json()["resourceType"] == "OperationOutcome"
        transaction = await client.post("", headers={"X-Provenance": value}, json={
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]})
        assert transaction.status_code == 400
        assert (await client.get("/Patient")).json()["total"] == 0
        assert (await client.get("/Provenance")).json()["total"] == 0


async def test_what_the_server_writes_by_itself_has_the_server_as_provenance_agent(background_app, twilio, db) -> None:
    from tests.messaging.helpers import communication_request, eventually, patient, read

    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
        communications = (await client.get(f"/fhir/Communication?based-on=CommunicationRequest/{rid}")).json()
        cid = communications["entry"][0]["resource"]["id"]
        for target, versions in ((f"Communication/{cid}", {"1", "2"}), (f"CommunicationRequest/{rid}", {"2"})):
            found = (await client.get(f"/fhir/Provenance?target={target}")).json().get("entry", [])
            provenances = [entry["resource"] for entry in found]
            # the CommunicationRequest's version 1 is the client's (no X-Provenance): no Provenance for it
            assert {p["target"][0]["reference"].rsplit("/", 1)[1] for p in provenances} == versions, target
            assert all(p["agent"][0]["who"]["identifier"] == {"system": "urn:fhir-server:device",
                                                              "value": "fhir-server"} for p in provenances)


@pytest.mark.parametrize("scope, allowed", [
    ("system/Patient.cruds", False), ("system/Patient.cruds system/Provenance.r", False),
    ("system/Patient.cruds system/Provenance.c", True), ("system/*.write system/Patient.rs", True),
    ("system/*.cruds", True)])
async def test_x_provenance_needs_a_scope_allowing_provenance_create(configured_client, database_url: str,
                                                                      scope: str, allowed: bool) -> None:
    from tests.auth.test_enforcement import bearer, system_token

    async with configured_client(FHIR_AUTH="smart") as client, \
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
        admin = bearer(await system_token(aconn, client, "system/*.cruds"))
        caller = {**bearer(await system_token(aconn, client, scope)), **_header(PROVENANCE)}
        created = await client.post("/Patient", json={"resourceType": "Patient", "active": True}, headers=caller)
        transaction = await client.post("", headers=caller, json={
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]})
        patients = (await client.get("/Patient", headers=admin)).json()["total"]
        provenances = (await client.get("/Provenance", headers=admin)).json().get("entry", [])
        if not allowed:
            for refused in (created, transaction):
                assert refused.status_code == 403, refused.text
                issue = refused.json()["issue"][0]
                assert issue["code"] == "forbidden" and "X-Provenance" in issue["diagnostics"]
            assert patients == 0 and provenances == []  # neither the write nor its Provenance
            return
        assert created.status_code == 201 and transaction.status_code == 200, (created.text, transaction.text)
        assert patients == 2
        targets = sorted(target["reference"] for entry in provenances for target in entry["resource"]["target"])
        written = sorted([created.headers["location"].removeprefix("http://test/fhir/"),
                          transaction.json()["entry"][0]["response"]["location"].removeprefix("http://test/fhir/")])
        assert targets == written
