"""A write carries its audit record in its own statement: both are stored, or neither; the AuditEvent job picks
records up quickly after a write and, while idle, still finds those of other processes."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import uuid4

import orjson
import psycopg
import pytest

from tests.audit.conftest import entity_references, wait_for_events


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


@asynccontextmanager
async def audit_log_unavailable(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    """Every insert into audit_log fails meanwhile."""
    await conn.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    try:
        yield
    finally:
        await conn.execute("ALTER TABLE audit_log_away RENAME TO audit_log")


async def _records(conn: psycopg.AsyncConnection, reference: str) -> list[dict]:
    rows = await (await conn.execute("SELECT event FROM audit_log")).fetchall()
    return [event for event in (orjson.loads(row[0]) for row in rows) if reference in entity_references(event)]


async def test_each_write_stores_its_audit_record_with_the_version_it_wrote(configured_client, aconn) -> None:
    async with configured_client(FHIR_BACKGROUND="off", FHIR_AUDIT_FLUSH_SECONDS="3600") as client:
        created = await client.post("/Patient", json={"resourceType": "Patient", "active": True})
        pid = created.json()["id"]
        updated = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": False})
        patched = await client.patch(f"/Patient/{pid}", content=b'[{"op": "remove", "path": "/active"}]',
                                     headers={"Content-Type": "application/json-patch+json"})
        deleted = await client.delete(f"/Patient/{pid}")
        recreated = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        assert [created.status_code, updated.status_code, patched.status_code, deleted.status_code,
                recreated.status_code] == [201, 200, 200, 204, 201]
        # in the table the moment each response is out (the journal is not flushed in this test)
        for version, action, code in [(1, "C", "create"), (2, "U", "update"), (3, "U", "patch"), (4, "D", "delete"),
                                      (5, "U", "update")]:
            [event] = await _records(aconn, f"Patient/{pid}/_history/{version}")
            assert (event["action"], event["subtype"][0]["code"], event["outcome"]) == (action, code, "0")
            assert f"Patient/{pid}" in entity_references(event)  # the patient the write concerned


@pytest.mark.parametrize("write", ["create", "update", "delete"])
async def test_a_write_whose_audit_record_fails_changes_nothing(configured_client, aconn, write: str) -> None:
    async with configured_client(FHIR_BACKGROUND="off") as client:
        pid = (await client.post("/Patient", json={"resourceType": "Patient", "active": True})).json()["id"]
        async with audit_log_unavailable(aconn):
            if write == "create":
                response = await client.post("/Patient", json={"resourceType": "Patient", "active": False})
            elif write == "update":
                response = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                                       "active": False})
            else:
                response = await client.delete(f"/Patient/{pid}")
        assert response.status_code == 500, response.text
        current = await client.get(f"/Patient/{pid}")
        assert current.status_code == 200 and current.json()["meta"]["versionId"] == "1"
        assert current.json()["active"] is True
        assert (await client.get("/Patient?active=false")).json()["total"] == 0
        history = await client.get(f"/Patient/{pid}/_history")
        assert len(history.json()["entry"]) == 1


async def test_the_audit_event_of_a_write_appears_soon_after_an_idle_spell(audited_client) -> None:
    async with audited_client() as client:
        first = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        await wait_for_events(client, f"entity=Patient/{first}")
        # idle now: the job looks at the table rarely, but a write of this process wakes it up
        pid = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        [event] = await wait_for_events(client, f"entity=Patient/{pid}")
        assert entity_references(event)[0] == f"Patient/{pid}/_history/1"


async def test_records_of_other_processes_are_picked_up_while_idle(audited_client, aconn) -> None:
    async with audited_client() as client:
        known = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        [stored] = await wait_for_events(client, f"entity=Patient/{known}")
        # as another server (or a journal replayed after a crash) would write them: a new record, and one
        # whose AuditEvent exists already
        event_id = str(uuid4())
        other = {**stored, "id": event_id, "entity": [{"what": {"reference": "Patient/elsewhere"}}]}
        await aconn.execute("INSERT INTO audit_log (id, event) VALUES (%s, %s), (%s, %s)",
                            (event_id, orjson.dumps(other), stored["id"], orjson.dumps(stored)))
        [found] = await wait_for_events(client, "entity=Patient/elsewhere")
        assert found["id"] == event_id
        assert len(await wait_for_events(client, f"entity=Patient/{known}")) == 1
        left = await aconn.execute("SELECT count(*) FROM audit_log WHERE id = ANY(%s::uuid[])",
                                   ([event_id, stored["id"]],))
        assert (await left.fetchone())[0] == 0
