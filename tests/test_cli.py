"""The `fhir-server` command: version, import, and serve on an embedded PostgreSQL that stops with it."""

import psycopg
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.conftest import free_port, wait_until_up

CLI = [sys.executable, "-m", "fhir_server.cli"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_version_and_help() -> None:
    assert "FHIR 4.0.1" in run_cli("version").stdout
    for command in ("serve", "migrate", "import", "version"):
        assert run_cli(command, "--help").returncode == 0


def test_import_reports_created_updated_and_failed(tmp_path: Path, database_url: str, db) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Task", "status": "draft", "intent": "order", "for": {"reference": "urn:uuid:1"}},
         "request": {"method": "POST", "url": "Task"}},
    ]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "lines.ndjson").write_text("\n".join([
        '{"resourceType": "Patient", "id": "p1", "extension": [{"url": "http://example.org/x", "valueDecimal": 1.50}]}',
        json.dumps({"resourceType": "Patient", "gender": "nope"}),
        "{not json",
    ]))
    result = run_cli("import", str(tmp_path / "bundle.json"), str(tmp_path / "lines.ndjson"),
                     env={"FHIR_DATABASE_URL": database_url})
    assert result.returncode == 1
    assert "created: 3  updated: 0  failed: 2" in result.stdout
    assert "lines.ndjson:2" in result.stderr and "lines.ndjson:3" in result.stderr
    assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 3
    stored = db.execute("SELECT content FROM resource WHERE fhir_id = 'p1'").fetchone()[0]
    assert b'"valueDecimal":1.50' in bytes(stored)  # as written in the file


def postgres_running(data_dir: Path) -> bool:
    return any(str(data_dir) in " ".join(proc.info["cmdline"] or []) for proc in psutil.process_iter(["cmdline"])
               if proc.info["cmdline"] and "postgres" in proc.info["cmdline"][0])


def test_serve_embedded_stops_database_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {key: value for key, value in os.environ.items() if key != "FHIR_DATABASE_URL"}

    def start() -> tuple[subprocess.Popen, str]:
        port = free_port()
        process = subprocess.Popen([*CLI, "serve", "--port", str(port), "--data-dir", str(data_dir)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/fhir"
        wait_until_up(base + "/metadata", process, seconds=60)
        return process, base

    process, base = start()
    try:
        httpx.put(base + "/Patient/kept", json={"resourceType": "Patient", "id": "kept"}).raise_for_status()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not postgres_running(data_dir)
    process, base = start()
    try:
        assert httpx.get(base + "/Patient/kept").status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert not postgres_running(data_dir)


def test_serve_refuses_open_host_without_authorization() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "1", env={"FHIR_AUTH": "none"})
    assert result.returncode == 2
    assert "FHIR_AUTH=none is allowed only on a loopback address" in result.stderr


def test_embedded_postgres_runs_with_the_configured_shared_buffers(tmp_path) -> None:
    from fhir_server.storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(tmp_path)
    try:
        uri = embedded.start("160MB")
        with psycopg.connect(uri) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "160MB"
        assert embedded.start("160MB") == uri  # already so: no restart
    finally:
        embedded.stop()
