"""Search results through HTTP: the `_lastUpdated` snapshot while paging, system search with `_type`,
_include over POST, and page tokens that are tampered with or expired."""

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from fhir_server.errors import FHIRError
from fhir_server.search import page
from tests.search.conftest import BASE
from tests.search.helpers import run


def create(client: httpx.Client, resource: dict) -> dict:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()


def links(bundle: dict) -> dict[str, str]:
    return {item["relation"]: item["url"] for item in bundle["link"]}


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("sort", ["_lastUpdated", "-_lastUpdated", "-_lastUpdated,_id"])
def test_updates_while_paging_by_last_updated_neither_repeat_nor_skip(client, sort):
    patients = [create(client, {"resourceType": "Patient", "name": [{"family": "Snap"}], "gender": "male"})
                for _ in range(6)]
    bundle = client.get("/Patient", params={"family": "snap", "_sort": sort, "_count": 2}).json()
    seen = match_ids(bundle)
    unseen = [p for p in patients if p["id"] not in seen]
    # Update one resource already shown and one not shown yet, and create one: the updated ones keep
    # the place they had when the search began; the new one belongs to a later search.
    for resource in (next(p for p in patients if p["id"] == seen[0]), unseen[0]):
        assert client.put(f"/Patient/{resource['id']}", json={**resource, "gender": "female"}).status_code == 200
    late = create(client, {"resourceType": "Patient", "name": [{"family": "Snap"}]})
    while "next" in links(bundle):
        bundle = client.get(links(bundle)["next"]).json()
        seen += match_ids(bundle)
    assert sorted(seen) == sorted(p["id"] for p in patients) and len(seen) == len(set(seen))
    assert late["id"] not in seen
    fresh = client.get("/Patient", params={"family": "snap", "_sort": sort, "_count": 10}).json()
    assert late["id"] in match_ids(fresh)


def test_system_search_with_type(client):
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Typed"}]})
    practitioner = create(client, {"resourceType": "Practitioner", "name": [{"family": "Typed"}]})
    create(client, {"resourceType": "Organization", "name": "Typed"})
    bundle = client.get("", params={"_type": "Patient,Practitioner", "name": "typed", "_sort": "_id"}).json()
    assert sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]) == \
        sorted([f"Patient/{patient['id']}", f"Practitioner/{practitioner['id']}"])
    assert "_type=Patient,Practitioner" in links(bundle)["self"]
    assert client.get("", params={"_type": "Patient", "family": "typed"}).json()["total"] == 1
    strict = client.get("", params={"_type": "Patient,Organization", "family": "typed"},
                        headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    lenient = client.get("", params={"_type": "Patient,Organization", "family": "typed"}).json()
    assert lenient["entry"][0]["search"]["mode"] == "outcome"  # `family` is not an Organization parameter
    assert client.get("", params={"_type": "Nope"}).status_code == 400
    assert client.get("/Patient", params={"_type": "Patient"}).status_code == 400


def test_post_search_with_include_and_revinclude(client):
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Posted"}]})
    observation = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                  "subject": {"reference": f"Patient/{patient['id']}"}})
    response = client.post("/Patient/_search", data={"family": "posted", "_revinclude": "Observation:subject"})
    entries = response.json()["entry"]
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in entries] == \
        [(patient["id"], "match"), (observation["id"], "include")]
    got = client.get("/Observation", params={"_id": observation["id"], "_include": "Observation:subject"}).json()
    assert [e["search"]["mode"] for e in got["entry"]] == ["match", "include"]
    assert got["total"] == 1


def test_tampered_page_token_is_400_with_outcome(client):
    for _ in range(3):
        create(client, {"resourceType": "Patient", "name": [{"family": "Token"}]})
    bundle = client.get("/Patient", params={"family": "token", "_count": 1}).json()
    token = dict(parse_qsl(urlsplit(links(bundle)["next"]).query))[page.PAGE_TOKEN]
    for bad in (token[:-3] + "AAA", "garbage"):
        response = client.get("/Patient", params={"family": "token", "_count": 1, page.PAGE_TOKEN: bad})
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == [page.PAGE_TOKEN]


async def test_expired_page_token_is_410(aconn):
    digest = page.query_digest([f"{BASE}/Patient", [], [], []])
    old = datetime.now(timezone.utc) - page.LIFETIME - timedelta(minutes=1)
    token = page.encode(page.Position((), 1, True, old), digest)
    with pytest.raises(FHIRError) as error:
        await run(aconn, "Patient", f"_page_token={token}")
    assert error.value.status == 410
    fresh = page.encode(page.Position((), 1, True, datetime.now(timezone.utc)), digest)
    await run(aconn, "Patient", f"_page_token={fresh}")
