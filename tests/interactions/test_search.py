"""search through HTTP: GET and POST _search, paging links from the request's base, strictness, counts."""

import httpx


def add_patients(client: httpx.Client, n: int, family: str = "Searchy") -> list[str]:
    return [client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family, "given": [f"G{i}"]}],
                                          "birthDate": f"19{50 + i}-01-01"}).json()["id"] for i in range(n)]


def test_search_by_family_pages_with_links_from_request_base(client: httpx.Client) -> None:
    ids = add_patients(client, 5)
    add_patients(client, 2, family="Other")
    page = client.get("/Patient", params={"family": "searchy", "_count": 2})
    assert page.status_code == 200
    bundle = page.json()
    assert bundle["type"] == "searchset"
    base = str(client.base_url).rstrip("/")
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"].startswith(base + "/Patient?")
    seen = [e["resource"]["id"] for e in bundle["entry"]]
    assert all(e["search"]["mode"] == "match" and e["fullUrl"] == f"{base}/Patient/{e['resource']['id']}"
               for e in bundle["entry"])
    while "next" in links:
        assert links["next"].startswith(base + "/")
        bundle = client.get(links["next"]).json()
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert sorted(seen) == sorted(ids)


def test_post_search_with_form_body(client: httpx.Client) -> None:
    ids = add_patients(client, 2)
    response = client.post("/Patient/_search", data={"family": "Searchy", "birthdate": "1950"})
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [ids[0]]


def test_sort_count_and_total(client: httpx.Client) -> None:
    add_patients(client, 3)
    newest_first = client.get("/Patient", params={"_sort": "-birthdate", "_total": "accurate"}).json()
    assert [e["resource"]["birthDate"] for e in newest_first["entry"]] == ["1952-01-01", "1951-01-01", "1950-01-01"]
    assert newest_first["total"] == 3
    count_only = client.get("/Patient", params={"_summary": "count"}).json()
    assert count_only["total"] == 3 and "entry" not in count_only


def test_unknown_parameter_lenient_and_strict(client: httpx.Client) -> None:
    add_patients(client, 1)
    lenient = client.get("/Patient", params={"nonsense": "1"})
    assert lenient.status_code == 200
    bundle = lenient.json()
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcomes and "nonsense" in str(outcomes[0]["resource"])
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "nonsense" not in self_link
    strict = client.get("/Patient", params={"nonsense": "1"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert "nonsense" in strict.json()["issue"][0]["diagnostics"]


def test_malformed_values_are_400(client: httpx.Client) -> None:
    assert client.get("/Patient", params={"birthdate": ">2000"}).status_code == 400
    assert client.get("/Patient", params={"birthdate": "not-a-date"}).status_code == 400
    assert client.get("/Patient", params={"_count": "many"}).status_code == 400


def test_search_on_domain_types_by_reference_and_token(client: httpx.Client) -> None:
    pid = add_patients(client, 1)[0]
    comm = client.post("/Communication", json={"resourceType": "Communication", "status": "completed",
                                               "subject": {"reference": f"Patient/{pid}"},
                                               "sent": "2026-03-05T10:00:00Z"}).json()
    for query in ({"subject": f"Patient/{pid}"}, {"subject": pid}, {"status": "completed"}, {"sent": "2026-03"}):
        found = client.get("/Communication", params=query).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [comm["id"]], query
    assert "entry" not in client.get("/Communication", params={"sent": "2025"}).json()
