"""Who sees what in $semantic-search: SMART scopes and the patient compartment as for a search, and a
patient's Consent that denies AI processing (nothing embedded, chunks removed, never in results)."""

import httpx
import pytest

from tests.auth.conftest import aconn  # noqa: F401 (fixture)
from tests.auth.test_enforcement import bearer, patient_token, system_token
from tests.embeddings.helpers import chunks, hits, settled
from tests.embeddings.test_semantic_search import KNEE, communication

DENY_AI = {"resourceType": "Consent", "status": "active",
           "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
           "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
           "provision": {"type": "deny", "purpose": [
               {"system": "http://fhir-server.dev/CodeSystem/consent-purpose", "code": "ai-processing"}]}}


async def created(client: httpx.AsyncClient, resource: dict, headers: dict | None = None) -> str:
    response = await client.post(f"/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
async def smart(configured_client):
    async with configured_client(FHIR_AUTH="smart", FHIR_EMBEDDINGS="hashed", FHIR_BACKGROUND="in-process", FHIR_WORKER_THREADS="2",
                                 FHIR_OUTBOX_POLL_SECONDS="0.2") as client:
        yield client


async def test_scopes_and_compartment_limit_results(smart, aconn, db) -> None:  # noqa: F811
    admin = bearer(await system_token(aconn, smart, "system/*.*"))
    ann = await created(smart, {"resourceType": "Patient"}, admin)
    bob = await created(smart, {"resourceType": "Patient"}, admin)
    ann_note = await created(smart, communication(ann, KNEE), admin)
    bob_note = await created(smart, communication(bob, KNEE.replace("left", "right")), admin)
    staff_only = await created(smart, {**communication(ann, KNEE + " Staff only."), "meta": {
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}]}}, admin)
    for fhir_id in (ann_note, bob_note, staff_only):
        await settled(db, "Communication", fhir_id)

    everything = await smart.get("/$semantic-search", params={"query": "knee MRI"}, headers=admin)
    assert set(hits(everything.json())) == {f"Communication/{ann_note}", f"Communication/{bob_note}",
                                            f"Communication/{staff_only}"}
    assert (await smart.get("/$semantic-search", params={"query": "knee"})).status_code == 401

    as_ann = bearer(await patient_token(aconn, smart, ann, "patient/Communication.rs"))
    response = await smart.get("/Communication/$semantic-search", params={"query": "knee MRI"}, headers=as_ann)
    assert response.status_code == 200 and hits(response.json()) == [f"Communication/{ann_note}"]
    # Nothing of other types or across all types without a scope for them.
    for path in ("/Observation/$semantic-search", "/$semantic-search"):
        assert (await smart.get(path, params={"query": "knee"}, headers=as_ann)).status_code == 403

    no_search = bearer(await system_token(aconn, smart, "system/Communication.r"))
    response = await smart.get("/Communication/$semantic-search", params={"query": "knee"}, headers=no_search)
    assert response.status_code == 403


async def test_consent_denying_ai_processing(background_app, db) -> None:
    async with background_app(FHIR_EMBEDDINGS="hashed") as (_, client):
        ann = (await client.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
        bob = (await client.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
        before = (await client.post("/fhir/Communication", json=communication(ann, KNEE))).json()["id"]
        other = (await client.post("/fhir/Communication", json=communication(bob, KNEE))).json()["id"]
        await settled(db, "Communication", before)
        await settled(db, "Communication", other)
        assert chunks(db, "Communication", before)

        # The denial removes the patient's chunks in its own transaction, and hides them from that moment.
        consent = {**DENY_AI, "patient": {"reference": f"Patient/{ann}"}}
        response = await client.post("/fhir/Consent", json=consent)
        assert response.status_code == 201, response.text
        consent_id = response.json()["id"]
        assert chunks(db, "Communication", before) == []
        found = (await client.get("/fhir/$semantic-search", params={"query": "knee MRI"})).json()
        assert hits(found) == [f"Communication/{other}"]

        # Nothing new of theirs is embedded.
        after = (await client.post("/fhir/Communication", json=communication(ann, KNEE))).json()["id"]
        await settled(db, "Communication", after)
        assert chunks(db, "Communication", after) == []

        # Withdrawn (here: no longer active), their resources are embedded again.
        response = await client.put(f"/fhir/Consent/{consent_id}", json={**consent, "id": consent_id,
                                                                          "status": "inactive"})
        assert response.status_code == 200, response.text
        await settled(db, "Communication", before)
        await settled(db, "Communication", after)
        assert chunks(db, "Communication", before) and chunks(db, "Communication", after)
        found = (await client.get("/fhir/$semantic-search", params={"query": "knee MRI"})).json()
        assert set(hits(found)) == {f"Communication/{before}", f"Communication/{after}", f"Communication/{other}"}


async def test_a_consent_that_permits_or_concerns_other_purposes_changes_nothing(background_app, db) -> None:
    async with background_app(FHIR_EMBEDDINGS="hashed") as (_, client):
        ann = (await client.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
        note = (await client.post("/fhir/Communication", json=communication(ann, KNEE))).json()["id"]
        await settled(db, "Communication", note)
        for provision in ({**DENY_AI["provision"], "type": "permit"},
                          {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                        "code": "HMARKT"}]}):
            response = await client.post("/fhir/Consent", json={**DENY_AI, "provision": provision,
                                                                "patient": {"reference": f"Patient/{ann}"}})
            assert response.status_code == 201, response.text
        assert chunks(db, "Communication", note)
        assert db.execute("SELECT count(*) FROM embedding_consent").fetchone()[0] == 0
