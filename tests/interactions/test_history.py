"""history at instance, type and system level: every version, newest first, deletions included, paged."""

import time

import httpx


def test_instance_history_lists_every_version_newest_first(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "female"})
    client.delete(f"/Patient/{pid}")
    history = client.get(f"/Patient/{pid}/_history")
    assert history.status_code == 200
    bundle = history.json()
    assert bundle["type"] == "history"
    deleted, updated, created = bundle["entry"]
    assert "resource" not in deleted
    assert deleted["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert deleted["response"]["status"].startswith("204")
    assert updated["resource"]["gender"] == "female"
    assert updated["request"]["method"] == "PUT"
    assert created["request"] == {"method": "POST", "url": "Patient"}
    assert created["response"]["etag"] == 'W/"1"'
    assert created["fullUrl"] == f"{str(client.base_url).rstrip('/')}/Patient/{pid}"


def test_history_of_unknown_instance_is_404(client: httpx.Client) -> None:
    assert client.get("/Patient/nope/_history").status_code == 404


def test_type_and_system_history_with_paging(client: httpx.Client) -> None:
    ids = [client.post("/Patient", json={"resourceType": "Patient"}).json()["id"] for _ in range(5)]
    client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order"})
    seen = []
    url = "/Patient/_history?_count=2"
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == list(reversed(ids))
    system = client.get("/_history").json()
    assert [e["resource"]["resourceType"] for e in system["entry"]][0] == "Task"
    assert len(system["entry"]) == 6


def test_history_since_is_inclusive(client: httpx.Client) -> None:
    client.post("/Patient", json={"resourceType": "Patient"})
    time.sleep(0.05)
    later = client.post("/Patient", json={"resourceType": "Patient"}).json()
    since = client.get("/Patient/_history", params={"_since": later["meta"]["lastUpdated"]}).json()
    assert [e["resource"]["id"] for e in since["entry"]] == [later["id"]]


def test_history_at_and_bad_parameters(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()
    client.put(f"/Patient/{pid['id']}", json={"resourceType": "Patient", "id": pid["id"], "gender": "female"})
    at = client.get(f"/Patient/{pid['id']}/_history", params={"_at": pid["meta"]["lastUpdated"]}).json()
    assert [e["resource"]["gender"] for e in at["entry"]] == ["male"]
    assert client.get("/_history?_since=yesterday").status_code == 400
    assert client.get("/_history?_cursor=garbage").status_code == 400
