"""batch and transaction Bundles: urn:uuid resolution, ordering, atomicity and per-entry responses."""

import base64
import json

import httpx


def entry(resource: dict, method: str, url: str, full_url: str | None = None, **request) -> dict:
    item = {"resource": resource, "request": {"method": method, "url": url, **request}}
    if full_url:
        item["fullUrl"] = full_url
    return item


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


PATIENT_URN = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"


def test_transaction_resolves_urn_uuid_references(client: httpx.Client) -> None:
    response = client.post("", json=bundle(
        "transaction",
        entry({"resourceType": "Communication", "status": "completed", "subject": {"reference": PATIENT_URN}},
              "POST", "Communication"),
        entry({"resourceType": "Patient", "name": [{"family": "Urn"}]}, "POST", "Patient", PATIENT_URN),
    ))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    comm_response, patient_response = (e["response"] for e in result["entry"])
    assert comm_response["status"].startswith("201")
    assert patient_response["etag"] == 'W/"1"'
    patient_id = patient_response["location"].split("/Patient/")[1].split("/")[0]
    comm_id = comm_response["location"].split("/Communication/")[1].split("/")[0]
    comm = client.get(f"/Communication/{comm_id}").json()
    assert comm["subject"]["reference"] == f"Patient/{patient_id}"


def test_transaction_failure_rolls_back_everything(client: httpx.Client, db) -> None:
    response = client.post("", json=bundle(
        "transaction",
        entry({"resourceType": "Patient", "name": [{"family": "Kept?"}]}, "POST", "Patient"),
        entry({"resourceType": "Patient", "gender": "nope"}, "POST", "Patient"),
    ))
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1]" in outcome["issue"][0]["diagnostics"]
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0


def test_transaction_with_unresolvable_urn_is_400_and_writes_nothing(client: httpx.Client, db) -> None:
    response = client.post("", json=bundle(
        "transaction",
        entry({"resourceType": "Communication", "status": "completed",
               "subject": {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}}, "POST", "Communication"),
    ))
    assert response.status_code == 400
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0


def test_transaction_conditional_reference_and_if_none_exist(client: httpx.Client) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient",
                                             "identifier": [{"system": "urn:mrn", "value": "7"}]}).json()
    response = client.post("", json=bundle(
        "transaction",
        entry({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7"}]}, "POST", "Patient",
              ifNoneExist="identifier=urn:mrn|7"),
        entry({"resourceType": "Task", "status": "requested", "intent": "order",
               "for": {"reference": "Patient?identifier=urn:mrn|7"}}, "POST", "Task"),
    ))
    assert response.status_code == 200, response.text
    first, second = response.json()["entry"]
    assert first["response"]["status"].startswith("200")
    task_id = second["response"]["location"].split("/Task/")[1].split("/")[0]
    assert client.get(f"/Task/{task_id}").json()["for"]["reference"] == f"Patient/{existing['id']}"


def test_transaction_processes_deletes_before_creates_and_reads_last(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    operations = [{"op": "replace", "path": "/gender", "value": "female"},
                  {"op": "add", "path": "/extension", "value": [{"url": "http://example.org/x", "valueDecimal": 1.25}]}]
    patch = base64.b64encode(json.dumps(operations).replace("1.25", "1.50").encode()).decode()
    response = client.post("", json=bundle(
        "transaction",
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        entry({"resourceType": "Patient", "id": "put-1"}, "PUT", "Patient/put-1"),
    ))
    assert response.status_code == 200, response.text
    read, patched, put = response.json()["entry"]
    assert read["resource"]["gender"] == "female"
    assert patched["response"]["etag"] == 'W/"2"'
    assert put["response"]["status"].startswith("201")
    assert b'"valueDecimal":1.50' in client.get(f"/Patient/{pid}").content  # as the patch wrote it


def test_transaction_delete_of_still_referenced_resource_is_409(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    client.post("/Task", json={"resourceType": "Task", "status": "requested", "intent": "order",
                               "for": {"reference": f"Patient/{pid}"}})
    response = client.post("", json=bundle("transaction", {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}))
    assert response.status_code == 409
    assert client.get(f"/Patient/{pid}").status_code == 200


def test_transaction_deleting_referrer_and_target_together_succeeds(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    tid = client.post("/Task", json={"resourceType": "Task", "status": "requested", "intent": "order",
                                     "for": {"reference": f"Patient/{pid}"}}).json()["id"]
    response = client.post("", json=bundle("transaction", {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
                                           {"request": {"method": "DELETE", "url": f"Task/{tid}"}}))
    assert response.status_code == 200, response.text
    assert client.get(f"/Patient/{pid}").status_code == 410


def test_batch_runs_entries_independently(client: httpx.Client, db) -> None:
    response = client.post("", json=bundle(
        "batch",
        entry({"resourceType": "Patient", "name": [{"family": "Good"}]}, "POST", "Patient"),
        entry({"resourceType": "Patient", "gender": "nope"}, "POST", "Patient"),
        {"request": {"method": "GET", "url": "Patient/unknown"}},
    ))
    assert response.status_code == 200
    good, bad, missing = response.json()["entry"]
    assert good["response"]["status"].startswith("201")
    assert bad["response"]["status"].startswith("400")
    assert bad["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert missing["response"]["status"].startswith("404")
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 1


def test_bundle_must_be_batch_or_transaction(client: httpx.Client) -> None:
    assert client.post("", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert client.post("", json={"resourceType": "Patient"}).status_code == 400


def test_entry_without_request_is_400(client: httpx.Client) -> None:
    response = client.post("", json=bundle("transaction", {"resource": {"resourceType": "Patient"}}))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]


def test_bundle_over_entry_limit_is_413(client: httpx.Client, db) -> None:
    entries = [entry({"resourceType": "Patient"}, "POST", "Patient") for _ in range(10_001)]
    response = client.post("", json=bundle("transaction", *entries))
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0


def test_transaction_prefer_minimal_omits_resources(client: httpx.Client) -> None:
    response = client.post("", json=bundle("transaction", entry({"resourceType": "Patient"}, "POST", "Patient")),
                           headers={"Prefer": "return=minimal"})
    (only,) = response.json()["entry"]
    assert "resource" not in only and only["response"]["status"].startswith("201")
