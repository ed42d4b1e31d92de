"""Waiting for the worker to (re)index a resource's chunks, and reading search results."""

import time
from typing import Any

import psycopg


def chunks(db: psycopg.Connection, resource_type: str, fhir_id: str) -> list[tuple[int, str, str, list[str]]]:
    """(version_id, model, text, patients) of each chunk of the resource, in order."""
    return db.execute("SELECT version_id, model, text, patients FROM embedding_chunk WHERE resource_type = %s "
                      "AND fhir_id = %s ORDER BY chunk_index", (resource_type, fhir_id)).fetchall()


async def settled(db: psycopg.Connection, resource_type: str, fhir_id: str, seconds: float = 30) -> None:
    """Until the resource's embedding work is done (no live outbox row left), at most `seconds`."""
    import asyncio

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        live = db.execute("SELECT count(*) FROM outbox WHERE topic = 'embed' AND resource_type = %s AND fhir_id = %s "
                          "AND state IN ('pending', 'queued', 'sending')", (resource_type, fhir_id)).fetchone()[0]
        done = db.execute("SELECT count(*) FROM outbox WHERE topic = 'embed' AND resource_type = %s AND fhir_id = %s",
                          (resource_type, fhir_id)).fetchone()[0]
        if done and not live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"embedding of {resource_type}/{fhir_id} not done within {seconds}s")


def hits(bundle: dict[str, Any]) -> list[str]:
    """`Type/id` of each match, in order."""
    return [f"{entry['resource']['resourceType']}/{entry['resource']['id']}" for entry in bundle.get("entry", [])
            if entry["search"]["mode"] == "match"]
