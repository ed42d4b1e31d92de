"""Filters through HTTP: chains and _has over GET and POST _search, custom SearchParameters after $reindex."""

import httpx

LOINC = "http://loinc.org"


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(entry["resource"]["id"] for entry in response.json().get("entry", [])
                  if entry["search"]["mode"] == "match")


def put(client: httpx.Client, resource: dict) -> None:
    response = client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def test_chain_and_has_over_get_and_post(client: httpx.Client) -> None:
    put(client, {"resourceType": "Organization", "id": "org-h", "name": "Harbour Hospital"})
    put(client, {"resourceType": "Patient", "id": "pat-h", "name": [{"family": "Chainly"}],
                 "managingOrganization": {"reference": "Organization/org-h"}})
    put(client, {"resourceType": "Patient", "id": "pat-x", "name": [{"family": "Other"}]})
    put(client, {"resourceType": "Observation", "id": "obs-h", "status": "final",
                 "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                 "subject": {"reference": "Patient/pat-h"}, "valueQuantity": {
                     "value": 5, "system": "http://unitsofmeasure.org", "code": "g", "unit": "g"}})
    assert ids(client.get("/Observation", params={"subject:Patient.organization.name": "harbour"})) == ["obs-h"]
    assert ids(client.post("/Observation/_search", data={"subject.name": "chainly"})) == ["obs-h"]
    assert ids(client.get("/Patient", params={"_has:Observation:subject:code": f"{LOINC}|8480-6"})) == ["pat-h"]
    assert ids(client.post("/Patient/_search", data={"_has:Observation:subject:code": "8480-6"})) == ["pat-h"]
    assert ids(client.get("/Observation", params={"code-value-quantity": "8480-6$ge4000|http://unitsofmeasure.org|mg"})
               ) == ["obs-h"]
    assert ids(client.get("/Observation", params={"_content": "chainly"})) == []
    strict = client.get("/Observation", params={"subject.nosuch": "x"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["code"] == "not-supported"


def test_custom_search_parameter_is_searchable_after_reindex(client: httpx.Client) -> None:
    for i, color in enumerate(["teal", "amber", "teal"]):
        put(client, {"resourceType": "Patient", "id": f"colored-{i}", "extension": [
            {"url": "http://example.org/eye-color", "valueCode": color}]})
    parameter = {
        "resourceType": "SearchParameter", "id": "eye-color", "url": "http://example.org/SearchParameter/eye-color",
        "name": "eye-color", "status": "active", "description": "Eye color", "code": "eye-color",
        "base": ["Patient"], "type": "token",
        "expression": "Patient.extension.where(url = 'http://example.org/eye-color').value",
    }
    put(client, parameter)
    before = client.get("/Patient", params={"eye-color": "teal"}, headers={"Prefer": "handling=strict"})
    assert before.status_code == 400  # not part of the registry before $reindex

    outcome = client.post("/Patient/$reindex")
    assert outcome.status_code == 200, outcome.text
    issue = outcome.json()["issue"][0]
    assert issue["severity"] == "information" and "Reindexed" in issue["diagnostics"]
    assert ids(client.get("/Patient", params={"eye-color": "teal"})) == ["colored-0", "colored-2"]

    # New writes are indexed with the parameter at once; a system-level $reindex covers every type.
    put(client, {"resourceType": "Patient", "id": "colored-3", "extension": [
        {"url": "http://example.org/eye-color", "valueCode": "amber"}]})
    assert ids(client.get("/Patient", params={"eye-color": "amber"})) == ["colored-1", "colored-3"]
    system = client.post("/$reindex")
    assert system.status_code == 200, system.text
    assert ids(client.get("/Patient", params={"eye-color:not": "teal", "_id": "colored-1,colored-2"})) == [
        "colored-1"]

    # Retired: the parameter leaves the registry at the next $reindex.
    put(client, {**parameter, "status": "retired"})
    assert client.post("/Patient/$reindex").status_code == 200
    gone = client.get("/Patient", params={"eye-color": "teal"}, headers={"Prefer": "handling=strict"})
    assert gone.status_code == 400


def test_reindex_needs_post(client: httpx.Client) -> None:
    assert client.get("/Patient/$reindex").status_code == 405
