"""An unexpected failure answers 500 with an OperationOutcome carrying a request id that is also logged."""

import logging

import httpx
import pytest

from fhir_server.api.app import FHIRApplication
from fhir_server.settings import Settings


class BrokenPool:
    def connection(self):
        raise RuntimeError("database exploded")


async def test_unexpected_error_is_500_with_logged_request_id(caplog: pytest.LogCaptureFixture) -> None:
    app = FHIRApplication(Settings(database_url="postgresql://unused"))
    app.pool = BrokenPool()
    caplog.set_level(logging.ERROR, logger="fhir_server")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/fhir/Patient/1")
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["issue"][0]["diagnostics"]
    assert request_id in caplog.text and "database exploded" in caplog.text
    assert "database exploded" not in response.text
