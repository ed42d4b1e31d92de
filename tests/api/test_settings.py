"""Settings that change behaviour: multiple conditional deletes, referential integrity, body and bundle limits."""

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "1"}]}


async def test_multiple_conditional_delete_when_allowed(configured_client, db) -> None:
    async with configured_client(FHIR_ALLOW_MULTIPLE_DELETE="true") as client:
        for _ in range(3):
            await client.post("/Patient", json=PATIENT)
        response = await client.delete("/Patient?identifier=urn:s|1")
        assert response.status_code == 204
    assert db.execute("SELECT count(*) FROM resource WHERE NOT deleted").fetchone()[0] == 0


async def test_delete_of_referenced_resource_allowed_when_integrity_is_off(configured_client) -> None:
    async with configured_client(FHIR_ENFORCE_REFERENTIAL_INTEGRITY_ON_DELETE="false") as client:
        pid = (await client.post("/Patient", json=PATIENT)).json()["id"]
        await client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                                         "for": {"reference": f"Patient/{pid}"}})
        assert (await client.delete(f"/Patient/{pid}")).status_code == 204


async def test_body_and_bundle_limits_follow_settings(configured_client, db) -> None:
    async with configured_client(FHIR_MAX_BODY_BYTES="200", FHIR_MAX_BUNDLE_ENTRIES="2") as client:
        big = {**PATIENT, "name": [{"family": "x" * 300}]}
        assert (await client.post("/Patient", json=big)).status_code == 413
        entry = {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry] * 3}
    async with configured_client(FHIR_MAX_BUNDLE_ENTRIES="2") as client:
        response = await client.post("", json=bundle)
        assert response.status_code == 413
        assert "at most 2" in response.json()["issue"][0]["diagnostics"]
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0
