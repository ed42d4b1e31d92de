"""Server-assigned MRNs: on create, update-as-create and in transactions; kept on update; unique under concurrency."""

import re
from concurrent.futures import ThreadPoolExecutor

import httpx

MRN_SYSTEM = "urn:fhir-server:mrn"
MRN = re.compile(r"MRN-\d{4}\d{6,}")


def mrns(patient: dict) -> list[str]:
    return [identifier["value"] for identifier in patient.get("identifier", []) if identifier["system"] == MRN_SYSTEM]


def test_create_assigns_an_mrn_that_is_searchable(client: httpx.Client) -> None:
    created = client.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "urn:other", "value": "7"}]}).json()
    [mrn] = mrns(created)
    assert MRN.fullmatch(mrn)
    assert created["identifier"][0] == {"system": "urn:other", "value": "7"}
    found = client.get("/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"}).json()
    assert [entry["resource"]["id"] for entry in found["entry"]] == [created["id"]]


def test_an_mrn_sent_by_the_client_is_kept(client: httpx.Client) -> None:
    sent = {"system": MRN_SYSTEM, "value": "MRN-LEGACY-1"}
    created = client.post("/Patient", json={"resourceType": "Patient", "identifier": [sent]}).json()
    assert mrns(created) == ["MRN-LEGACY-1"]


def test_update_as_create_assigns_and_update_keeps_the_mrn(client: httpx.Client) -> None:
    created = client.put("/Patient/mrn-put", json={"resourceType": "Patient", "id": "mrn-put"})
    assert created.status_code == 201
    [mrn] = mrns(created.json())
    updated = client.put("/Patient/mrn-put", json={"resourceType": "Patient", "id": "mrn-put", "gender": "other"})
    assert mrns(updated.json()) == [mrn]


def test_transaction_creates_get_mrns(client: httpx.Client) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:0000000{i}-0000-0000-0000-000000000000", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}} for i in range(3)]}
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    assigned = [mrns(entry["resource"])[0] for entry in response.json()["entry"]]
    assert len(set(assigned)) == 3


def test_concurrent_creates_get_distinct_mrns(client: httpx.Client) -> None:
    base = str(client.base_url)

    def create(_: int) -> str:
        with httpx.Client(base_url=base, timeout=30) as own:
            response = own.post("/Patient", json={"resourceType": "Patient"})
            assert response.status_code == 201
            return mrns(response.json())[0]

    with ThreadPoolExecutor(20) as pool:
        assigned = list(pool.map(create, range(20)))
    assert len(set(assigned)) == 20 and all(MRN.fullmatch(mrn) for mrn in assigned)
