"""create, read, vread, update, patch and delete through HTTP, with their headers and database effects."""

import json

import httpx

FHIR_JSON = "application/fhir+json"


def patient(**extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Ann"]}], "gender": "female",
            "birthDate": "1970-03-05", **extra}


def test_create_assigns_id_and_sets_headers(client: httpx.Client, db) -> None:
    response = client.post("/Patient", json={**patient(), "id": "client-chosen"})
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"{str(client.base_url).rstrip('/')}/Patient/{body['id']}/_history/1"
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert db.execute("SELECT count(*) FROM resource_version WHERE fhir_id = %s", (body["id"],)).fetchone()[0] == 1


def test_read_returns_resource_as_sent_plus_meta(client: httpx.Client) -> None:
    sent = patient(telecom=[{"system": "phone", "value": "+1 555 0100"}],
                   identifier=[{"system": "urn:fhir-server:mrn", "value": "MRN-2026000001"}])  # so none is added
    created = client.post("/Patient", json=sent).json()
    response = client.get(f"/Patient/{created['id']}")
    assert response.status_code == 200
    read = response.json()
    assert {k: v for k, v in read.items() if k not in ("id", "meta")} == sent
    assert response.headers["etag"] == 'W/"1"'


def test_read_unknown_is_404_with_operation_outcome(client: httpx.Client) -> None:
    response = client.get("/Patient/does-not-exist")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_type_is_404(client: httpx.Client) -> None:
    response = client.get("/Patientt/1")
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-supported"


def test_conditional_read_not_modified(client: httpx.Client) -> None:
    created = client.post("/Patient", json=patient())
    url = f"/Patient/{created.json()['id']}"
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"2"'}).status_code == 200
    assert client.get(url, headers={"If-Modified-Since": created.headers["last-modified"]}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_update_creates_new_version_and_vread_keeps_old(client: httpx.Client) -> None:
    created = client.post("/Patient", json=patient()).json()
    pid = created["id"]
    changed = {**patient(gender="male"), "id": pid}
    response = client.put(f"/Patient/{pid}", json=changed)
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"2"'
    assert client.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert client.get(f"/Patient/{pid}/_history/2").json()["gender"] == "male"
    assert client.get(f"/Patient/{pid}/_history/3").status_code == 404


def test_update_unchanged_content_makes_no_new_version(client: httpx.Client, db) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    response = client.put(f"/Patient/{pid}", json={**patient(), "id": pid, "meta": {"versionId": "9"}})
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"1"'
    assert db.execute("SELECT count(*) FROM resource_version WHERE fhir_id = %s", (pid,)).fetchone()[0] == 1


def test_update_changing_only_a_decimals_precision_makes_a_new_version(client: httpx.Client) -> None:
    """`1.50` is not `1.5` in FHIR (R4 decimal precision): the update is a change, kept as written."""
    body = b'{"resourceType":"Observation","id":"w","status":"final","code":{"text":"w"},"valueQuantity":{"value":%s}}'
    headers = {"Content-Type": FHIR_JSON}
    assert client.put("/Observation/w", content=body % b"1.5", headers=headers).status_code == 201
    changed = client.put("/Observation/w", content=body % b"1.50", headers=headers)
    assert changed.headers["etag"] == 'W/"2"' and b'"value":1.50' in client.get("/Observation/w").content
    assert client.put("/Observation/w", content=body % b"1.50", headers=headers).headers["etag"] == 'W/"2"'


def test_update_as_create_with_client_id(client: httpx.Client) -> None:
    response = client.put("/Patient/my-id-1", json={**patient(), "id": "my-id-1"})
    assert response.status_code == 201
    assert response.headers["location"].endswith("/Patient/my-id-1/_history/1")
    assert client.get("/Patient/my-id-1").status_code == 200


def test_update_id_mismatch_or_missing_is_400(client: httpx.Client) -> None:
    assert client.put("/Patient/a1", json={**patient(), "id": "b2"}).status_code == 400
    missing = client.put("/Patient/a1", json=patient())
    assert missing.status_code == 400
    assert missing.json()["issue"][0]["expression"] == ["Patient.id"]


def test_update_with_stale_if_match_is_412_and_changes_nothing(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    client.put(f"/Patient/{pid}", json={**patient(gender="male"), "id": pid})
    stale = client.put(f"/Patient/{pid}", json={**patient(gender="other"), "id": pid}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/Patient/{pid}").json()["gender"] == "male"
    fresh = client.put(f"/Patient/{pid}", json={**patient(gender="other"), "id": pid}, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200


def test_conditional_update_by_identifier(client: httpx.Client) -> None:
    ident = [{"system": "urn:mrn", "value": "123"}]
    first = client.put("/Patient?identifier=urn:mrn|123", json=patient(identifier=ident))
    assert first.status_code == 201
    second = client.put("/Patient?identifier=urn:mrn|123", json=patient(identifier=ident, gender="male"))
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    client.post("/Patient", json=patient(identifier=ident))
    assert client.put("/Patient?identifier=urn:mrn|123", json=patient(identifier=ident)).status_code == 412


def test_patch_applies_json_patch_and_honours_if_match(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    headers = {"Content-Type": "application/json-patch+json"}
    response = client.patch(f"/Patient/{pid}", content=json.dumps(ops), headers=headers)
    assert response.status_code == 200
    assert response.json()["gender"] == "male"
    assert response.headers["etag"] == 'W/"2"'
    stale = client.patch(f"/Patient/{pid}", content='[{"op":"remove","path":"/gender"}]',
                         headers={**headers, "If-Match": 'W/"1"'})
    assert stale.status_code == 412


def test_patch_result_is_validated(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    response = client.patch(f"/Patient/{pid}", content='[{"op":"replace","path":"/gender","value":"nope"}]',
                            headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 400
    assert client.get(f"/Patient/{pid}").json()["gender"] == "female"


def test_delete_then_read_is_410_with_version_headers(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    assert client.delete(f"/Patient/{pid}").status_code == 204
    gone = client.get(f"/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.headers["etag"] == 'W/"2"'
    assert "last-modified" in gone.headers
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/Patient/{pid}/_history/2").status_code == 410
    assert client.delete(f"/Patient/{pid}").status_code == 204


def test_update_after_delete_recreates(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    client.delete(f"/Patient/{pid}")
    response = client.put(f"/Patient/{pid}", json={**patient(), "id": pid})
    assert response.status_code == 201
    assert response.headers["etag"] == 'W/"3"'


def test_delete_of_referenced_resource_is_409_listing_referrers(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    comm = client.post("/Communication", json={"resourceType": "Communication", "status": "completed",
                                               "subject": {"reference": f"Patient/{pid}"}}).json()
    response = client.delete(f"/Patient/{pid}")
    assert response.status_code == 409
    assert f"Communication/{comm['id']}" in response.text
    assert client.get(f"/Patient/{pid}").status_code == 200
    assert client.delete(f"/Communication/{comm['id']}").status_code == 204
    assert client.delete(f"/Patient/{pid}").status_code == 204


def test_conditional_delete(client: httpx.Client) -> None:
    client.post("/Patient", json=patient(identifier=[{"system": "urn:x", "value": "1"}]))
    assert client.delete("/Patient?identifier=urn:x|1").status_code == 204
    assert client.get("/Patient?identifier=urn:x|1").json().get("entry", []) == []
    client.post("/Patient", json=patient(identifier=[{"system": "urn:x", "value": "2"}]))
    client.post("/Patient", json=patient(identifier=[{"system": "urn:x", "value": "2"}]))
    assert client.delete("/Patient?identifier=urn:x|2").status_code == 412


def test_prefer_return(client: httpx.Client) -> None:
    minimal = client.post("/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and "location" in minimal.headers
    outcome = client.post("/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert outcome.json()["resourceType"] == "OperationOutcome"
    full = client.post("/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"


def test_pretty_and_json_format(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    pretty = client.get(f"/Patient/{pid}?_pretty=true&_format=json")
    assert pretty.status_code == 200
    assert b"\n  " in pretty.content
    assert client.get(f"/Patient/{pid}", headers={"Accept": "application/json"}).status_code == 200


def test_absolute_reference_to_this_server_counts_as_local(client: httpx.Client) -> None:
    base = str(client.base_url).rstrip("/")
    pid = client.post("/Patient", json=patient()).json()["id"]
    task = client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                                      "for": {"reference": f"{base}/Patient/{pid}"}}).json()
    assert [e["resource"]["id"] for e in client.get("/Task", params={"patient": pid}).json()["entry"]] == [task["id"]]
    assert client.delete(f"/Patient/{pid}").status_code == 409


def test_very_long_values_are_stored_and_found(client: httpx.Client) -> None:
    code = "x" * 5000
    response = client.post("/Patient", json=patient(identifier=[{"system": "urn:long", "value": code}],
                                                     name=[{"family": "L" * 5000}]))
    assert response.status_code == 201, response.text
    assert client.get(f"/Patient/{response.json()['id']}").json()["identifier"][0]["value"] == code


def test_patch_whose_test_operation_fails_is_422(client: httpx.Client) -> None:
    pid = client.post("/Patient", json=patient()).json()["id"]
    response = client.patch(f"/Patient/{pid}", content='[{"op":"test","path":"/gender","value":"male"}]',
                            headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 422
    assert response.json()["resourceType"] == "OperationOutcome"
