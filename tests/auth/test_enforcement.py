"""Scopes enforced on every interaction of a server with FHIR_AUTH=smart, with tokens from its own OAuth server."""

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
import pytest

from fhir_server.auth.registry import add_client, add_user

REDIRECT = "https://app.example/cb"
BASE = "http://test/fhir"


@pytest.fixture
async def smart(configured_client) -> AsyncIterator[httpx.AsyncClient]:
    async with configured_client(FHIR_AUTH="smart") as client:
        yield client


async def system_token(aconn: psycopg.AsyncConnection, http: httpx.AsyncClient, scope: str) -> str:
    registered, secret = await add_client(aconn, f"backend {secrets.token_hex(4)}", "confidential-symmetric", [],
                                          scope.split())
    response = await http.post("http://test/auth/token", data={"grant_type": "client_credentials", "scope": scope},
                               auth=(registered.client_id, secret))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def patient_token(aconn: psycopg.AsyncConnection, http: httpx.AsyncClient, patient: str, scope: str) -> str:
    """A token from the authorization code flow of a pre-approved app for a user bound to `patient`."""
    return await user_token(aconn, http, scope, patient)


async def user_token(aconn: psycopg.AsyncConnection, http: httpx.AsyncClient, scope: str,
                     patient: str | None = None) -> str:
    """A token from the authorization code flow of a pre-approved app for a new user (bound to `patient`,
    with launch/patient, if given)."""
    user = f"user-{secrets.token_hex(4)}"
    await add_user(aconn, user, "pw", patient=patient)
    scope = f"launch/patient {scope}" if patient else scope
    registered, _ = await add_client(aconn, "app", "public", [REDIRECT], scope.split(), pre_approved_user=user)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({"response_type": "code", "client_id": registered.client_id, "redirect_uri": REDIRECT,
                       "scope": scope, "state": "s", "aud": BASE, "code_challenge": challenge,
                       "code_challenge_method": "S256"})
    redirect = await http.get(f"http://test/auth/authorize?{query}")
    assert redirect.status_code == 302, redirect.text
    code = parse_qs(urlsplit(redirect.headers["location"]).query)["code"][0]
    response = await http.post("http://test/auth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
        "client_id": registered.client_id})
    assert response.status_code == 200, response.text
    assert response.json().get("patient") == patient
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def seed(http: httpx.AsyncClient, token: str) -> dict[str, str]:
    """Two patients, each with a Communication and a Task; a Practitioner they reference."""
    headers = bearer(token)
    ids = {"practitioner": (await http.post("/Practitioner", json={"resourceType": "Practitioner"},
                                            headers=headers)).json()["id"]}
    for name in ("a", "b"):
        pid = (await http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": name}]},
                               headers=headers)).json()["id"]
        ids[name] = pid
        ids[f"comm_{name}"] = (await http.post("/Communication", headers=headers, json={
            "resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{pid}"},
            "sender": {"reference": f"Practitioner/{ids['practitioner']}"}})).json()["id"]
        ids[f"task_{name}"] = (await http.post("/Task", headers=headers, json={
            "resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient/{pid}"}})).json()["id"]
    return ids


async def test_missing_or_invalid_token_is_401_with_challenge(smart: httpx.AsyncClient) -> None:
    missing = await smart.get("/Patient")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["resourceType"] == "OperationOutcome"
    garbage = await smart.get("/Patient", headers=bearer("not.a.token"))
    assert garbage.status_code == 401 and 'error="invalid_token"' in garbage.headers["www-authenticate"]
    assert (await smart.get("/metadata")).status_code == 200
    assert (await smart.get("/.well-known/smart-configuration")).status_code == 200


async def test_system_scopes_per_interaction(smart: httpx.AsyncClient, aconn: psycopg.AsyncConnection) -> None:
    writer = await system_token(aconn, smart, "system/*.cruds")
    ids = await seed(smart, writer)
    reader = bearer(await system_token(aconn, smart, "system/Patient.rs"))
    assert (await smart.get(f"/Patient/{ids['a']}", headers=reader)).status_code == 200
    assert (await smart.get("/Patient", headers=reader)).json()["total"] == 2
    assert (await smart.get(f"/Patient/{ids['a']}/_history", headers=reader)).status_code == 200
    for response in (await smart.post("/Patient", json={"resourceType": "Patient"}, headers=reader),
                     await smart.delete(f"/Patient/{ids['a']}", headers=reader),
                     await smart.get(f"/Task/{ids['task_a']}", headers=reader),
                     await smart.get("/Task", headers=reader)):
        assert response.status_code == 403
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_transaction_entries_are_authorized_one_by_one(smart: httpx.AsyncClient, db,
                                                             aconn: psycopg.AsyncConnection) -> None:
    token = bearer(await system_token(aconn, smart, "system/Patient.cruds"))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7c5b1f4e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Task", "status": "draft", "intent": "order",
                      "for": {"reference": "urn:uuid:7c5b1f4e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Task"}}]}
    response = await smart.post("", json=bundle, headers=token)
    assert response.status_code == 403
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0
    bundle["type"] = "batch"
    bundle["entry"][1]["resource"]["for"] = {"reference": "Patient/x"}
    statuses = [e["response"]["status"] for e in (await smart.post("", json=bundle, headers=token)).json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("403")


async def test_patient_scopes_confine_to_the_compartment(smart: httpx.AsyncClient,
                                                         aconn: psycopg.AsyncConnection) -> None:
    ids = await seed(smart, await system_token(aconn, smart, "system/*.cruds"))
    mine = bearer(await patient_token(aconn, smart, ids["a"], "patient/*.cruds"))
    assert (await smart.get(f"/Patient/{ids['a']}", headers=mine)).status_code == 200
    # Outside the compartment: 404, as if it did not exist.
    assert (await smart.get(f"/Patient/{ids['b']}", headers=mine)).status_code == 404
    assert (await smart.get(f"/Communication/{ids['comm_b']}", headers=mine)).status_code == 404
    assert (await smart.delete(f"/Task/{ids['task_b']}", headers=mine)).status_code == 404
    found = (await smart.get("/Communication", params={"_total": "accurate"}, headers=mine)).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [ids["comm_a"]] and found["total"] == 1
    patients = (await smart.get("/Patient", params={"_revinclude": "Task:patient"}, headers=mine)).json()
    assert sorted(e["resource"]["id"] for e in patients["entry"]) == sorted([ids["a"], ids["task_a"]])
    included = (await smart.get("/Communication", params={"_include": "Communication:subject"},
                                headers=mine)).json()
    assert ids["b"] not in str(included)
    others = await smart.post("/Communication", headers=mine, json={
        "resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{ids['b']}"}})
    assert others.status_code == 403
    refused = await smart.get("/Communication", params={"subject": f"Patient/{ids['b']}"},
                              headers=bearer(await system_token(aconn, smart, "system/Communication.rs")))
    assert len(refused.json()["entry"]) == 1  # the refused create left nothing behind
    own = await smart.post("/Communication", headers=mine, json={
        "resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{ids['a']}"}})
    assert own.status_code == 201
    assert (await smart.get(f"/Patient/{ids['b']}/Communication", headers=mine)).json().get("entry") is None


async def test_v2_scope_filters_limit_search_read_and_history(smart: httpx.AsyncClient,
                                                              aconn: psycopg.AsyncConnection) -> None:
    writer = bearer(await system_token(aconn, smart, "system/*.cruds"))
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    ids = {}
    for code in ("laboratory", "vital-signs"):
        ids[code] = (await smart.post("/Observation", headers=writer, json={
            "resourceType": "Observation", "status": "final", "code": {"text": code},
            "category": [{"coding": [{"system": category, "code": code}]}]})).json()["id"]
    labs = bearer(await system_token(aconn, smart, f"system/Observation.rs?category={category}|laboratory"))
    found = (await smart.get("/Observation", headers=labs)).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [ids["laboratory"]]
    assert (await smart.get(f"/Observation/{ids['laboratory']}", headers=labs)).status_code == 200
    assert (await smart.get(f"/Observation/{ids['vital-signs']}", headers=labs)).status_code == 404
    history = (await smart.get("/Observation/_history", headers=labs)).json()
    assert [e["resource"]["id"] for e in history["entry"]] == [ids["laboratory"]]
    assert (await smart.get(f"/Observation/{ids['vital-signs']}/_history", headers=labs)).status_code == 404


async def test_v2_scope_filters_limit_what_is_written(smart: httpx.AsyncClient, aconn: psycopg.AsyncConnection,
                                                      db) -> None:
    category = "http://terminology.hl7.org/CodeSystem/observation-category"

    def observation(code: str) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": code},
                "category": [{"coding": [{"system": category, "code": code}]}]}

    labs = bearer(await system_token(aconn, smart, f"system/Observation.cruds?category={category}|laboratory"))
    created = await smart.post("/Observation", headers=labs, json=observation("laboratory"))
    assert created.status_code == 201
    lab_id = created.json()["id"]
    refused = await smart.post("/Observation", headers=labs, json=observation("vital-signs"))
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    # Turning a laboratory result into a vital sign takes it out of what the token may write.
    moved = await smart.put(f"/Observation/{lab_id}", headers=labs, json={**observation("vital-signs"), "id": lab_id})
    assert moved.status_code == 403
    # A conditional update names no id and answers 200 without Location: the id written comes from the body.
    identified = {**observation("laboratory"), "identifier": [{"system": "urn:lab", "value": "7"}]}
    assert (await smart.put("/Observation?identifier=urn:lab|7", headers=labs, json=identified)).status_code == 201
    again = await smart.put("/Observation?identifier=urn:lab|7", headers=labs, json={**identified, "status": "amended"})
    assert again.status_code == 200
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("laboratory"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("vital-signs"), "request": {"method": "POST", "url": "Observation"}}]}
    assert (await smart.post("", headers=labs, json=bundle)).status_code == 403
    stored = db.execute("SELECT count(*), max(version_id) FROM resource WHERE resource_type = 'Observation'").fetchone()
    assert stored == (2, 2)  # the two creates and the conditional update; the refused ones left nothing
