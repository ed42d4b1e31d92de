"""Every interaction, through HTTP, becomes an AuditEvent in the BALP shape, searchable with the normal engine."""

import base64
import json

import httpx

from tests.audit.conftest import entity_references, query_of, subtype, wait_for_events

INTERACTION = "http://hl7.org/fhir/restful-interaction"


async def _patient(client: httpx.AsyncClient, family: str = "Audit") -> str:
    created = await client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]})
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def test_instance_interactions_are_audited_with_their_versions(audited_client) -> None:
    async with audited_client() as client:
        pid = await _patient(client)
        assert (await client.get(f"/Patient/{pid}")).status_code == 200
        assert (await client.get(f"/Patient/{pid}/_history/1")).status_code == 200
        assert (await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                          "name": [{"family": "Changed"}]})).status_code == 200
        patched = await client.patch(f"/Patient/{pid}", content=json.dumps(
            [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]),
            headers={"Content-Type": "application/json-patch+json"})
        assert patched.status_code == 200, patched.text
        assert (await client.get(f"/Patient/{pid}/_history")).status_code == 200
        assert (await client.delete(f"/Patient/{pid}")).status_code == 204

        events = await wait_for_events(client, f"entity=Patient/{pid}", 7)
        by_subtype = {subtype(event): event for event in events}
        expected = {"create": ("C", "1"), "read": ("R", "1"), "vread": ("R", "1"), "update": ("U", "2"),
                    "patch": ("U", "3"), "history-instance": ("R", None), "delete": ("D", "4")}
        assert set(by_subtype) == set(expected)
        for code, (action, version) in expected.items():
            event = by_subtype[code]
            assert event["type"]["code"] == "rest"
            assert event["subtype"][0]["system"] == INTERACTION
            assert event["action"] == action, code
            assert event["outcome"] == "0"
            assert event["recorded"].endswith("Z")
            what = f"Patient/{pid}/_history/{version}" if version else f"Patient/{pid}"
            assert what in entity_references(event), (code, entity_references(event))
            # the patient-role entity, and the client's address on the requesting agent
            assert any(e.get("role", {}).get("code") == "1" and e["what"]["reference"] == f"Patient/{pid}"
                       for e in event["entity"])
            requestor = next(agent for agent in event["agent"] if agent["requestor"])
            assert requestor["network"] == {"address": "127.0.0.1", "type": "2"}
            assert event["source"]["observer"]["display"] == "fhir-server"
        # searchable by the standard AuditEvent parameters
        for query, count in ((f"entity=Patient/{pid}&action=D", 1), (f"patient=Patient/{pid}&subtype=update", 1),
                             (f"entity=Patient/{pid}&type=rest&outcome=0&date=ge2020-01-01", 7)):
            found = await wait_for_events(client, query, count)
            assert len(found) == count, query


async def test_searches_record_their_query_and_patient(audited_client) -> None:
    async with audited_client() as client:
        pid = await _patient(client)
        observation = await client.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{pid}"}})
        oid = observation.json()["id"]
        assert (await client.get(f"/Observation?subject=Patient/{pid}&code:text=pulse")).status_code == 200
        assert (await client.get(f"/Patient/{pid}/Observation")).status_code == 200
        assert (await client.get(f"/Observation/{oid}")).status_code == 200

        events = await wait_for_events(client, f"patient=Patient/{pid}&action=E", 2)
        queries = {query_of(event) for event in events if subtype(event) == "search-type"}
        assert f"subject=Patient%2F{pid}&code%3Atext=pulse" in queries
        read = await wait_for_events(client, f"entity=Observation/{oid}&subtype=read")
        # the patient of a read resource comes from its subject
        assert f"Patient/{pid}" in entity_references(read[0])


async def test_type_and_system_history_search_and_operations(audited_client) -> None:
    async with audited_client() as client:
        await _patient(client, "Zed")
        assert (await client.get("/Patient/_history?_count=5")).status_code == 200
        assert (await client.get("/_history?_count=5")).status_code == 200
        assert (await client.get("/Patient?family=Zed")).status_code == 200
        validated = await client.post("/Patient/$validate", json={"resourceType": "Patient"})
        assert validated.status_code == 200, validated.text
        for code, action in (("history-type", "R"), ("history-system", "R"), ("search-type", "E"),
                             ("operation", "E")):
            events = await wait_for_events(client, f"subtype={code}")
            assert events[0]["action"] == action
        operation = (await wait_for_events(client, "subtype=operation"))[0]
        assert operation["subtype"][1]["code"] == "$validate"
        history = (await wait_for_events(client, "subtype=history-type"))[0]
        assert base64.b64decode(next(e["query"] for e in history["entity"] if "query" in e)) == b"_count=5"


async def test_failures_are_audited_with_their_outcome(audited_client) -> None:
    async with audited_client() as client:
        assert (await client.get("/Patient/no-such-patient")).status_code == 404
        assert (await client.get("/Patient?birthdate=>1970")).status_code == 400
        events = await wait_for_events(client, "entity=Patient/no-such-patient")
        assert events[0]["outcome"] == "4" and subtype(events[0]) == "read"
        assert "no-such-patient" in events[0]["outcomeDesc"]
        failed_search = await wait_for_events(client, "subtype=search-type&outcome=4")
        assert failed_search[0]["outcomeDesc"].startswith("400")


async def test_bundles_and_each_entry_are_audited(audited_client) -> None:
    async with audited_client() as client:
        transaction = await client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:7f4b1c52-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:7f4b1c52-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}}]})
        assert transaction.status_code == 200, transaction.text
        locations = [entry["response"]["location"] for entry in transaction.json()["entry"]]
        pid = locations[0].split("/")[-3]
        batch = await client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": "Patient/missing-one"}}]})
        assert batch.status_code == 200

        entries = await wait_for_events(client, f"patient=Patient/{pid}&subtype=create", 2)
        assert sorted(ref.split("/")[0] for event in entries for ref in entity_references(event)
                      if "_history" in ref) == ["Observation", "Patient"]
        assert (await wait_for_events(client, "subtype=transaction"))[0]["outcome"] == "0"
        assert (await wait_for_events(client, "subtype=batch"))[0]["action"] == "E"
        assert (await wait_for_events(client, f"entity=Patient/{pid}&subtype=read"))[0]["outcome"] == "0"
        assert (await wait_for_events(client, "entity=Patient/missing-one"))[0]["outcome"] == "4"


async def test_raw_binary_reads_and_writes_are_audited(audited_client) -> None:
    async with audited_client() as client:
        created = await client.post("/Binary", content=b"plain text", headers={"Content-Type": "text/plain"})
        assert created.status_code == 201, created.text
        bid = created.json()["id"]
        assert (await client.get(f"/Binary/{bid}")).content == b"plain text"
        events = await wait_for_events(client, f"entity=Binary/{bid}", 2)
        assert {subtype(event) for event in events} == {"create", "read"}


async def test_audit_events_are_not_full_text_indexed(audited_client) -> None:
    async with audited_client() as client:
        await client.get("/Patient/full-text")
        await wait_for_events(client, "entity=Patient/full-text")
        strict = await client.get("/AuditEvent?_content=read", headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400 and "not full-text indexed" in strict.text
        lenient = await client.get("/AuditEvent?_content=read")
        assert lenient.status_code == 200 and "_content" not in lenient.json()["link"][0]["url"]
