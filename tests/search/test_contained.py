"""_contained and _containedType through HTTP: contained resources searched, returned, kept in sync."""

import httpx
import orjson
import psycopg

from fhir_server.storage import repository

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def medication(contained_id: str, code: str, form: str = "tablet") -> dict:
    return {"resourceType": "Medication", "id": contained_id, "code": {"coding": [{"system": RXNORM, "code": code}]},
            "form": {"coding": [{"system": "http://snomed.info/sct", "code": form}]}}


def request(fhir_id: str, *contained: dict) -> dict:
    return {"resourceType": "MedicationRequest", "id": fhir_id, "status": "active", "intent": "order",
            "contained": list(contained), "subject": {"reference": "Patient/pat-c"},
            "medicationReference": {"reference": f"#{contained[0]['id']}" if contained else "Medication/top"}}


def put(client: httpx.Client, resource: dict) -> None:
    response = client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def matches(response: httpx.Response) -> list[tuple[str, str, str]]:
    """(fullUrl path after the base, resourceType, id) of the matches, sorted."""
    assert response.status_code == 200, response.text
    return sorted((entry["fullUrl"].split("/fhir/", 1)[1], entry["resource"]["resourceType"], entry["resource"]["id"])
                  for entry in response.json().get("entry", []) if entry["search"]["mode"] == "match")


def stored(client: httpx.Client) -> None:
    put(client, {"resourceType": "Patient", "id": "pat-c"})
    put(client, {"resourceType": "Medication", "id": "top", "code": {"coding": [{"system": RXNORM, "code": "1000"}]}})
    put(client, request("rx-1", medication("med1", "1000"), medication("med2", "2000")))
    put(client, request("rx-2", medication("m", "3000")))


def test_contained_true_finds_containers_or_the_contained_resources(client: httpx.Client) -> None:
    stored(client)
    code = f"{RXNORM}|1000"
    assert matches(client.get("/Medication", params={"code": code, "_contained": "true"})) == [
        ("MedicationRequest/rx-1", "MedicationRequest", "rx-1")]
    found = client.get("/Medication", params={"code": code, "_contained": "true", "_containedType": "contained"})
    # med2 lives in the same container but does not match.
    assert matches(found) == [("MedicationRequest/rx-1#med1", "Medication", "med1")]
    assert found.json()["total"] == 1
    assert "_contained=true" in found.json()["link"][0]["url"]
    # Several parameters must hold for the same contained resource.
    assert matches(client.get("/Medication", params={"code": "1000", "form": "tablet", "_contained": "true"})
                   ) == [("MedicationRequest/rx-1", "MedicationRequest", "rx-1")]
    assert matches(client.get("/Medication", params={"code": "2000,3000", "_id": "m", "_contained": "true",
                                                     "_containedType": "contained"})
                   ) == [("MedicationRequest/rx-2#m", "Medication", "m")]
    assert matches(client.get("/Medication", params={"code": "9999", "_contained": "true"})) == []
    accurate = client.get("/Medication", params={"_contained": "true", "_containedType": "contained",
                                                 "_total": "accurate", "_count": "1"})
    assert accurate.json()["total"] == 3


def test_contained_both_and_false(client: httpx.Client) -> None:
    stored(client)
    code = f"{RXNORM}|1000"
    assert matches(client.get("/Medication", params={"code": code, "_contained": "both"})) == [
        ("Medication/top", "Medication", "top"), ("MedicationRequest/rx-1", "MedicationRequest", "rx-1")]
    both = client.get("/Medication", params={"code": code, "_contained": "both", "_containedType": "contained"})
    assert matches(both) == [("Medication/top", "Medication", "top"),
                             ("MedicationRequest/rx-1#med1", "Medication", "med1")]
    for params in ({"code": code}, {"code": code, "_contained": "false"}):
        assert matches(client.get("/Medication", params=params)) == [("Medication/top", "Medication", "top")]
    # The default never returns contained matches: not by type, not across all types, not by their ids.
    assert matches(client.get("/Medication", params={"code": "2000"})) == []
    assert matches(client.get("/Medication", params={"_id": "med1"})) == []
    assert matches(client.get("/Medication")) == [("Medication/top", "Medication", "top")]
    assert matches(client.get("/MedicationRequest", params={"code": "1000"})) == []
    assert matches(client.get("/", params={"_type": "Medication", "code": "2000"})) == []


def test_contained_rows_follow_updates_and_deletes(client: httpx.Client, db: psycopg.Connection) -> None:
    stored(client)
    contained = {"_contained": "true", "_containedType": "contained"}
    put(client, request("rx-1", medication("med2", "2000")))  # med1 is gone from the container
    assert matches(client.get("/Medication", params={"code": "1000", **contained})) == []
    assert matches(client.get("/Medication", params={"code": "2000", **contained})) == [
        ("MedicationRequest/rx-1#med2", "Medication", "med2")]
    assert client.delete("/MedicationRequest/rx-1").status_code in (200, 204)
    assert matches(client.get("/Medication", params={"code": "2000", **contained})) == []
    assert db.execute("SELECT count(*) FROM search_token WHERE contained_id IS NOT NULL AND resource_id = "
                      "(SELECT id FROM resource WHERE fhir_id = 'rx-1')").fetchone()[0] == 0


def test_contained_errors(client: httpx.Client) -> None:
    strict = {"Prefer": "handling=strict"}
    assert client.get("/Medication", params={"_contained": "maybe"}).status_code == 400
    assert client.get("/Medication", params={"_containedType": "inside"}).status_code == 400
    system = client.get("/", params={"_contained": "true"})
    assert system.status_code == 400 and system.json()["resourceType"] == "OperationOutcome"
    chained = client.get("/Medication", params={"_contained": "true", "manufacturer.name": "x"}, headers=strict)
    assert chained.status_code == 400 and "manufacturer.name" in chained.text
    sorted_ = client.get("/Medication", params={"_contained": "true", "_sort": "code"}, headers=strict)
    assert sorted_.status_code == 400


def test_reindex_rewrites_contained_rows(client: httpx.Client, db: psycopg.Connection) -> None:
    stored(client)
    db.execute("DELETE FROM search_token WHERE contained_id IS NOT NULL")  # as if indexed before 0014
    contained = {"code": "1000", "_contained": "true", "_containedType": "contained"}
    assert matches(client.get("/Medication", params=contained)) == []
    assert client.post("/MedicationRequest/$reindex").status_code == 200
    assert matches(client.get("/Medication", params=contained)) == [
        ("MedicationRequest/rx-1#med1", "Medication", "med1")]


async def test_create_many_writes_contained_rows(aconn: psycopg.AsyncConnection, db: psycopg.Connection) -> None:
    await repository.create_many(aconn, [request("rx-a", medication("c1", "1000")), request("rx-b")], keep_ids=True)
    rows = db.execute("SELECT t.resource_type, t.code, t.contained_id, r.fhir_id FROM search_token t "
                      "JOIN resource r ON r.id = t.resource_id WHERE t.contained_id IS NOT NULL "
                      "AND t.param IN ('_id', 'code') ORDER BY t.param").fetchall()
    assert rows == [("#Medication", "c1", "c1", "rx-a"), ("#Medication", "1000", "c1", "rx-a")]


def test_contained_matches_keep_written_decimals(client: httpx.Client) -> None:
    dose = {**medication("dose", "4000"), "amount": {"numerator": {"value": 12345.0}, "denominator": {"value": 1}}}
    body = orjson.dumps(request("rx-3", dose)).replace(b"12345.0", b"1.50")
    response = client.put("/MedicationRequest/rx-3", content=body, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 201, response.text
    found = client.get("/Medication", params={"code": "4000", "_contained": "true", "_containedType": "contained"})
    assert matches(found) == [("MedicationRequest/rx-3#dose", "Medication", "dose")]
    assert b'"numerator":{"value":1.50}' in found.content
