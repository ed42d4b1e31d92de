"""A write and its audit record commit together; audit records of reads survive a SIGKILL of the server."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import psycopg

from fhir_server.audit import journal
from fhir_server.audit.journal import lines
from tests.conftest import free_port, wait_until_up


def _events(db: psycopg.Connection, text: str) -> list[str]:
    """The audit records (not yet turned into AuditEvents) whose JSON contains `text`."""
    rows = db.execute("SELECT convert_from(event, 'UTF8') FROM audit_log WHERE position(%s in "
                      "convert_from(event, 'UTF8')) > 0", (text,)).fetchall()
    return [row[0] for row in rows]


async def test_a_write_is_audited_in_its_own_transaction(configured_client, db: psycopg.Connection) -> None:
    async with configured_client(FHIR_AUDIT_FLUSH_SECONDS="3600") as client:  # no journal flush in this test
        created = await client.post("/Patient", json={"resourceType": "Patient"})
        pid = created.json()["id"]
        # committed with the Patient: there the moment the response is
        assert len(_events(db, f'"Patient/{pid}/_history/1"')) == 1


async def test_a_failed_transaction_leaves_neither_the_write_nor_its_audit(configured_client,
                                                                            db: psycopg.Connection) -> None:
    async with configured_client(FHIR_AUDIT_FLUSH_SECONDS="0.05") as client:
        existing = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        response = await client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "atomic"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": existing},
             "request": {"method": "PUT", "url": f"Patient/{existing}", "ifMatch": 'W/"9"'}}]})
        assert response.status_code in (409, 412), response.text
        # the failure is audited (through the journal) ...
        for _ in range(100):
            if _events(db, '"code":"transaction"'):
                break
            await asyncio.sleep(0.05)  # the journal is flushed on this event loop
        failed = _events(db, '"code":"transaction"')
        assert len(failed) == 1 and '"outcome":"4"' in failed[0]
        # ... but the create that ran before the failing entry left no resource and no audit record
        assert (await client.get("/Patient?identifier=urn:t|atomic")).json()["total"] == 0
        creates = [event for event in _events(db, '"code":"create"') if '"outcome":"0"' in event]
        assert len(creates) == 1 and f"Patient/{existing}/_history/1" in creates[0]


async def test_no_write_without_its_audit_record(configured_client, db: psycopg.Connection) -> None:
    async with configured_client() as client:
        db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        try:
            response = await client.post("/Patient", json={"resourceType": "Patient", "active": True})
        finally:
            db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        assert response.status_code == 500
        assert db.execute("SELECT count(*) FROM resource WHERE resource_type = 'Patient'").fetchone()[0] == 0


def _serve(database_url: str, journal: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_AUDIT_JOURNAL_DIR": str(journal),
           "FHIR_AUDIT_FLUSH_SECONDS": "3600", "FHIR_BACKGROUND": "off"}
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(port)],
                                   env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    wait_until_up(base + "/metadata", process)
    return process, base


def test_read_audits_survive_a_sigkill_of_the_server(database_url: str, db: psycopg.Connection,
                                                     tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    process, base = _serve(database_url, journal, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            pid = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
            for _ in range(25):
                assert http.get(f"/Patient/{pid}").status_code == 200
        os.kill(process.pid, signal.SIGKILL)  # right after the reads: nothing was flushed (every 3600 s)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    reads = '"code":"read"'
    assert [event for event in _events(db, f"Patient/{pid}") if reads in event] == []
    assert sum(len(lines(path)) for path in journal.iterdir()) == 25
    # the next server on the same journal replays what the dead one left, at start-up
    process, _ = _serve(database_url, journal, tmp_path / "server.log")
    try:
        assert len([event for event in _events(db, f"Patient/{pid}") if reads in event]) == 25
        assert len(list(journal.iterdir())) == 1  # only the new server's own segment
    finally:
        process.terminate()
        process.wait(10)


def test_records_beyond_the_mapped_part_of_a_segment_are_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 4096)  # about 30 records mapped, the rest appended
    segments = journal.Journal(tmp_path, None, 3600)  # type: ignore[arg-type]  # no flush: no database
    segments._open_segment()
    ids = [f"record-{n}" for n in range(100)]
    for event_id in ids:
        segments.append(event_id, orjson.dumps({"id": event_id, "padding": "x" * 100}))
    assert segments.path is not None
    assert [orjson.loads(line.partition(b"\t")[2])["id"] for line in lines(segments.path)] == ids
