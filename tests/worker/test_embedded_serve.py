"""The embedded default: `fhir-server serve` without Redis relays and delivers by itself; `worker` needs Redis."""

import os
import subprocess
import sys

import httpx
from typer.testing import CliRunner

from fhir_server.cli import app
from fhir_server.settings import get_settings
from tests.conftest import free_port, wait_until_up
from tests.messaging.helpers import communication_request, eventually, patient, read
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN


async def test_serve_alone_delivers(database_url, twilio, db, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_BACKGROUND": "auto",
           "FHIR_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "FHIR_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "FHIR_TWILIO_FROM_NUMBER": "+15005550006", "FHIR_TWILIO_API_BASE": twilio.url}
    env.pop("FHIR_REDIS_URL", None)
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        wait_until_up(base + "/metadata", process)
        async with httpx.AsyncClient(base_url=base) as client:
            pid = (await client.post("/Patient", json=patient())).json()["id"]
            rid = (await client.post("/CommunicationRequest", json=communication_request(f"Patient/{pid}"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
        assert len(twilio.messages) == 1
    finally:
        process.terminate()
        assert process.wait(15) == 0


def test_worker_command_needs_redis(monkeypatch) -> None:
    monkeypatch.delenv("FHIR_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "FHIR_REDIS_URL" in result.output
