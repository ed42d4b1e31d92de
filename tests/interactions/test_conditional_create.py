"""Conditional create: If-None-Exist semantics, and no duplicates under concurrent identical requests."""

from concurrent.futures import ThreadPoolExecutor

import httpx

IDENTIFIER = {"system": "urn:test:mrn", "value": "42"}
CONDITION = {"If-None-Exist": "identifier=urn:test:mrn|42"}


def test_if_none_exist_creates_once_then_returns_existing(client: httpx.Client) -> None:
    body = {"resourceType": "Patient", "identifier": [IDENTIFIER]}
    first = client.post("/Patient", json=body, headers=CONDITION)
    assert first.status_code == 201
    second = client.post("/Patient", json=body, headers=CONDITION)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    client.put("/Patient/other", json={**body, "id": "other"})
    assert client.post("/Patient", json=body, headers=CONDITION).status_code == 412


def test_twenty_concurrent_conditional_creates_make_one_resource(server_url: str, db) -> None:
    body = {"resourceType": "Patient", "identifier": [IDENTIFIER]}

    def post(_: int) -> int:
        with httpx.Client(base_url=server_url, timeout=30) as http:
            return http.post("/Patient", json=body, headers=CONDITION).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(post, range(20)))
    assert sorted(statuses) == [200] * 19 + [201]
    assert db.execute("SELECT count(*) FROM resource WHERE resource_type = 'Patient'").fetchone()[0] == 1
