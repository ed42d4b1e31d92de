"""History under restricted tokens: type and system history show only the versions of resources the token may read."""

import httpx
import psycopg

from tests.auth.test_enforcement import bearer, patient_token, seed, smart, system_token  # noqa: F401 (fixture)

STAFF_ONLY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}


async def _pages(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[dict]:
    """Every entry of a history, following `next` links (at most 50 pages)."""
    entries: list[dict] = []
    for _ in range(50):
        page = await http.get(url, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["type"] == "history"
        entries += body.get("entry", [])
        following = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not following:
            return entries
        url = following[0]
    raise AssertionError("history paging did not end")


def _versions(entries: list[dict]) -> list[str]:
    """`Type/id/_history/n` of each entry (the version from its ETag, `W/"n"`)."""
    return [f"{e['fullUrl'].split('/fhir/')[1]}/_history/{e['response']['etag'][3:-1]}" for e in entries]


async def test_type_and_system_history_under_patient_scopes(smart: httpx.AsyncClient,
                                                            aconn: psycopg.AsyncConnection) -> None:
    admin = bearer(await system_token(aconn, smart, "system/*.cruds"))
    ids = await seed(smart, await system_token(aconn, smart, "system/*.cruds"))
    communication = (await smart.get(f"/Communication/{ids['comm_a']}", headers=admin)).json()
    assert (await smart.put(f"/Communication/{ids['comm_a']}", headers=admin,
                            json={**communication, "status": "stopped"})).status_code == 200
    staff_note = (await smart.post("/Communication", headers=admin, json={
        "resourceType": "Communication", "status": "completed", "meta": {"security": [STAFF_ONLY]},
        "subject": {"reference": f"Patient/{ids['a']}"}})).json()["id"]
    mine = bearer(await patient_token(aconn, smart, ids["a"], "patient/*.read"))

    communications = await _pages(smart, "/Communication/_history?_count=1", mine)
    assert _versions(communications) == [f"Communication/{ids['comm_a']}/_history/2",
                                         f"Communication/{ids['comm_a']}/_history/1"]
    assert [e["resource"]["status"] for e in communications] == ["stopped", "completed"]

    everything = await _pages(smart, "/_history?_count=2", mine)
    assert sorted(_versions(everything)) == sorted([
        f"Patient/{ids['a']}/_history/1", f"Task/{ids['task_a']}/_history/1",
        f"Communication/{ids['comm_a']}/_history/1", f"Communication/{ids['comm_a']}/_history/2"])
    seen = {entry["resource"]["id"] for entry in everything}
    assert not seen & {ids["b"], ids["comm_b"], ids["task_b"], ids["practitioner"], staff_note}
    # Unrestricted, the same history holds everything: the restriction is the token's, not the paging's.
    assert len(await _pages(smart, "/_history?_count=2", admin)) == 9

    assert (await smart.get(f"/Communication/{ids['comm_b']}/_history", headers=mine)).status_code == 404
    assert (await smart.get(f"/Communication/{staff_note}/_history", headers=mine)).status_code == 404
    own = (await smart.get(f"/Communication/{ids['comm_a']}/_history", headers=mine)).json()
    assert len(own["entry"]) == 2

    # The history of a resource that left the compartment is no longer the patient's.
    assert (await smart.delete(f"/Task/{ids['task_a']}", headers=admin)).status_code in (200, 204)
    assert await _pages(smart, "/Task/_history", mine) == []
    assert len(await _pages(smart, "/Task/_history", admin)) == 3

