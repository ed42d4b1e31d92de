"""Helpers for the audit tests: an in-process server whose background work turns audit records into
AuditEvents quickly, and a bounded wait for them."""

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

WAIT_SECONDS = 20


@pytest.fixture
def audited_client(configured_client: Callable, tmp_path: Path) -> Callable:
    """`async with audited_client(**env) as client:` an app that materialises AuditEvents every 50 ms."""

    @asynccontextmanager
    async def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        async with configured_client(FHIR_BACKGROUND="in-process", FHIR_AUDIT_FLUSH_SECONDS="0.05",
                                     FHIR_AUDIT_JOURNAL_DIR=str(tmp_path / "journal"), **env) as client:
            yield client

    return make


async def wait_for_events(client: httpx.AsyncClient, query: str, count: int = 1,
                          headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The AuditEvents `AuditEvent?{query}` finds, once there are at least `count` (bounded wait)."""
    found: list[dict[str, Any]] = []
    for _ in range(WAIT_SECONDS * 10):
        response = await client.get(f"/AuditEvent?{query}&_count=100", headers=headers)
        assert response.status_code == 200, response.text
        found = [entry["resource"] for entry in response.json().get("entry", [])
                 if entry["search"]["mode"] == "match"]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"AuditEvent?{query}: {len(found)} events after {WAIT_SECONDS}s, wanted {count}")


def subtype(event: dict[str, Any]) -> str:
    return event["subtype"][0]["code"]


def entity_references(event: dict[str, Any]) -> list[str]:
    return [entity["what"]["reference"] for entity in event.get("entity", []) if "what" in entity]


def query_of(event: dict[str, Any]) -> str | None:
    for entity in event.get("entity", []):
        if "query" in entity:
            return base64.b64decode(entity["query"]).decode()
    return None
