"""Search results through HTTP: the `_lastUpdated` snapshot while paging, sorted paging while resources are
added, system search with `_type`, _include over POST, and page tokens that are tampered with or expired."""

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


@pytest.mark.parametrize("sort", ["_lastUpdated", "-_lastUpdated", "-_lastUpdated,_id", "family,-_lastUpdated",
                                  "family,_lastUpdated"])
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


def test_sorted_paging_on_several_keys_while_patients_are_added(client):
    """Pages of a sort on several keys, followed through `next` links while Patients are created between
    them (with keys before, at and after the position): no Patient twice, none of the first ones missed,
    and those in R4 order (lowest value ascending, highest descending, missing keys last)."""
    families = ["Young", "Adams", "baker", "Clark", "Évans", "Fox", "Adams", None]
    entries = []
    for i in range(120):
        patient = {"resourceType": "Patient", "id": f"s{i}", "gender": ["female", "male", "other"][i % 3]}
        if families[i % len(families)]:
            patient["name"] = [{"family": families[i % len(families)]}, {"family": "Zz-second-name"}]
        if i % 5:
            patient["birthDate"] = f"19{40 + i % 50}-0{1 + i % 9}-1{i % 10}"
        entries.append({"resource": patient, "request": {"method": "PUT", "url": f"Patient/s{i}"}})
    response = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.text
    for sort in ("family,-birthdate", "-family,gender", "-birthdate,family,-_id"):
        bundle = client.get("/Patient", params={"_sort": sort, "_count": 9}).json()
        seen: list[dict] = []
        extra = 0
        while True:
            seen += [e["resource"] for e in bundle.get("entry", [])]
            create(client, {"resourceType": "Patient", "gender": "female", "birthDate": "1951-05-05",
                            "name": [{"family": ["Aaron", "Zed", "Clark", "Fox"][extra % 4]}]})
            extra += 1
            if "next" not in links(bundle):
                break
            bundle = client.get(links(bundle)["next"]).json()
        seen_ids = [resource["id"] for resource in seen]
        assert len(seen_ids) == len(set(seen_ids)), sort
        assert {f"s{i}" for i in range(120)} <= set(seen_ids), sort
        first, descending = sort.split(",")[0].lstrip("-"), sort.startswith("-")

        def key(resource: dict) -> tuple:
            if first == "family":
                names = sorted(name["family"].lower().replace("é", "e") for name in resource.get("name", []))
                value = (names[-1] if descending else names[0]) if names else None
            else:
                value = resource.get("birthDate")
            return value is None, value or ""

        keys = [key(resource) for resource in seen if resource["id"].startswith("s")]
        present = [k for k in keys if not k[0]]
        assert present == sorted(present, reverse=descending), sort
        assert keys == present + [k for k in keys if k[0]], sort  # missing keys last


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
