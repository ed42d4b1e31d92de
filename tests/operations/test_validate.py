"""$validate at type and instance level: the OperationOutcome of a write, and nothing written."""

import httpx


def test_type_validate_reports_problems_without_writing(client: httpx.Client, db) -> None:
    response = client.post("/Patient/$validate", json={"resourceType": "Patient", "gender": "nope"})
    assert response.status_code == 200
    issues = response.json()["issue"]
    assert any(issue["severity"] == "error" and issue.get("expression") == ["Patient.gender"] for issue in issues)
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0


def test_validate_accepts_parameters_and_reports_success(client: httpx.Client) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "gender": "male"}}]}
    issues = client.post("/Patient/$validate", json=body).json()["issue"]
    assert [issue["severity"] for issue in issues] == ["information"]


def test_instance_validate_checks_id_and_delete_mode(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                               "for": {"reference": f"Patient/{pid}"}})
    mismatch = client.post(f"/Patient/{pid}/$validate", json={"resourceType": "Patient", "id": "other"}).json()
    assert mismatch["issue"][0]["severity"] == "error"
    delete_mode = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    conflicts = client.post(f"/Patient/{pid}/$validate", json=delete_mode).json()["issue"]
    assert conflicts[0]["code"] == "conflict"


def test_unknown_operation_is_404(client: httpx.Client) -> None:
    assert client.post("/Patient/$nope", json={}).status_code == 404
