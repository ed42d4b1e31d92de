"""Every error is an OperationOutcome with the right status, and bad input changes nothing."""

import httpx


def assert_outcome(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"]
    return body


def count(db, resource_type: str = "Patient") -> int:
    return db.execute("SELECT count(*) FROM resource WHERE resource_type = %s", (resource_type,)).fetchone()[0]


def test_malformed_json_is_400(client: httpx.Client, db) -> None:
    response = client.post("/Patient", content=b'{"resourceType": "Patient",', headers={"Content-Type":
                                                                                         "application/fhir+json"})
    assert "not valid JSON" in assert_outcome(response, 400)["issue"][0]["diagnostics"]
    assert count(db) == 0


def test_wrong_resource_type_is_400(client: httpx.Client, db) -> None:
    response = client.post("/Patient", json={"resourceType": "Observation", "status": "final",
                                             "code": {"text": "x"}})
    assert_outcome(response, 400)
    assert count(db, "Observation") == 0


def test_invalid_resource_lists_every_problem_with_paths(client: httpx.Client, db) -> None:
    response = client.post("/Patient", json={"resourceType": "Patient", "gender": "nope", "birthDate": "1970-13-45",
                                             "foo": 1})
    body = assert_outcome(response, 400)
    expressions = {e for issue in body["issue"] for e in issue.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate"} <= expressions
    assert len(body["issue"]) >= 3
    assert count(db) == 0


def test_xml_is_refused(client: httpx.Client) -> None:
    assert_outcome(client.get("/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    assert_outcome(client.get("/metadata?_format=xml"), 406)
    assert_outcome(client.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}),
                   415)


def test_body_over_limit_is_413_before_parsing(client: httpx.Client, db) -> None:
    # The server under test runs with the default limit of 32 MiB.
    big = b'{"resourceType":"Patient","text":{"status":"generated","div":"' + b"x" * (33 * 1024 * 1024) + b'"}}'
    assert_outcome(client.post("/Patient", content=big, headers={"Content-Type": "application/fhir+json"}), 413)
    assert count(db) == 0


def test_method_not_allowed_is_405(client: httpx.Client) -> None:
    assert_outcome(client.delete("/metadata"), 405)
    assert_outcome(client.put("/Patient/_history", json={}), 405)


def test_invalid_id_is_400(client: httpx.Client) -> None:
    assert_outcome(client.get("/Patient/" + "x" * 65), 400)


def test_unknown_path_is_404(client: httpx.Client) -> None:
    assert_outcome(client.get("/Patient/1/_history/1/extra"), 404)


def test_patch_wrong_content_type_is_415(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    assert_outcome(client.patch(f"/Patient/{pid}", content=b"[]", headers={"Content-Type": "text/plain"}), 415)


def test_empty_body_is_400(client: httpx.Client) -> None:
    assert_outcome(client.post("/Patient", content=b"", headers={"Content-Type": "application/fhir+json"}), 400)


def test_bad_if_match_is_400(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    assert_outcome(client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                              headers={"If-Match": "garbage"}), 400)
