from tests.audit.conftest import wait_for_events, subtype

async def test_read_is_audited(audited_client):
    async with audited_client() as client:
        created = await client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Audit"}]})
        assert created.status_code == 201, created.text
        pid = created.json()["id"]
        assert (await client.get(f"/Patient/{pid}")).status_code == 200
        events = await wait_for_events(client, f"entity=Patient/{pid}", 2)
        print(events)
        assert {subtype(e) for e in events} >= {"create", "read"}
