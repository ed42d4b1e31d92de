"""Patient/[id]/$everything: the Patient, what references it and what that references; paged, filtered."""

from urllib.parse import urlsplit

import httpx
import pytest


def create(client: httpx.Client, body: dict) -> str:
    response = client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def observation(patient: str, practitioner: str, when: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": f"Practitioner/{practitioner}"}],
            "effectiveDateTime": when}


@pytest.fixture
def record(client: httpx.Client) -> dict:
    organization = create(client, {"resourceType": "Organization", "name": "Clinic"})
    practitioner = create(client, {"resourceType": "Practitioner"})
    other = create(client, {"resourceType": "Patient"})
    patient = create(client, {"resourceType": "Patient",
                              "managingOrganization": {"reference": f"Organization/{organization}"},
                              "link": [{"other": {"reference": f"Patient/{other}"}, "type": "seealso"}]})
    observations = [create(client, observation(patient, practitioner, f"20{10 + i}-01-01")) for i in range(12)]
    task = create(client, {"resourceType": "Task", "status": "requested", "intent": "order",
                           "owner": {"reference": f"Patient/{patient}"}})
    create(client, observation(other, practitioner, "2020-01-01"))
    return {"patient": patient, "organization": organization, "practitioner": practitioner, "other": other,
            "observations": observations, "task": task}


def all_pages(client: httpx.Client, url: str, **params) -> tuple[list[tuple[str, str]], int]:
    found, pages = [], 0
    bundle = client.get(url, params=params).json()
    while True:
        pages += 1
        found += [(entry["resource"]["resourceType"], entry["resource"]["id"]) for entry in bundle.get("entry", [])]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return found, pages
        assert following[0].startswith(str(client.base_url))
        bundle = client.get(following[0][len(str(client.base_url)):]).json()


def test_everything_pages_through_the_record(client: httpx.Client, record: dict) -> None:
    found, pages = all_pages(client, f"/Patient/{record['patient']}/$everything", _count=5)
    assert len(found) == len(set(found)) == 16 and pages == 4
    assert set(found) == {("Patient", record["patient"]), ("Organization", record["organization"]),
                          ("Practitioner", record["practitioner"]), ("Task", record["task"]),
                          *(("Observation", oid) for oid in record["observations"])}


def test_everything_filters(client: httpx.Client, record: dict) -> None:
    url = f"/Patient/{record['patient']}/$everything"
    only, _ = all_pages(client, url, _type="Observation,Task")
    assert {kind for kind, _ in only} == {"Observation", "Task"} and len(only) == 13
    dated, _ = all_pages(client, url, start="2012-01-01", end="2013-12-31")
    observations = {oid for kind, oid in dated if kind == "Observation"}
    assert observations == set(record["observations"][2:4])
    assert ("Task", record["task"]) in dated  # no date: kept
    later, _ = all_pages(client, url, _since="2999-01-01T00:00:00Z")
    assert later == []


def test_everything_errors(client: httpx.Client, record: dict) -> None:
    assert client.get("/Patient/nobody/$everything").status_code == 404
    assert client.get(f"/Patient/{record['patient']}/$everything", params={"start": "soon"}).status_code == 400
    assert client.get(f"/Observation/{record['observations'][0]}/$everything").status_code == 404
    token = client.get(f"/Patient/{record['patient']}/$everything", params={"_count": 2}).json()
    following = next(link["url"] for link in token["link"] if link["relation"] == "next")
    query = urlsplit(following).query.replace("_count=2", "_count=3")
    assert client.get(f"/Patient/{record['patient']}/$everything?{query}").status_code == 400
