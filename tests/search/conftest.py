"""Search test helpers: store resources with their index rows directly, without the HTTP or storage layers."""

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
import pytest

from fhir_server.search.extract import INDEX_COLUMNS, extract_index

BASE = "http://test.local/fhir"


def insert_for_test(conn: psycopg.Connection, resource: dict[str, Any]) -> int:
    """Store `resource` as version 1 with its index rows; returns the surrogate `resource.id`."""
    resource = dict(resource)
    last_updated = resource.get("meta", {}).get("lastUpdated") or datetime.now(timezone.utc).isoformat()
    resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": last_updated}
    with conn.transaction():
        resource_id = conn.execute(
            "INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
            "VALUES (%s, %s, 1, %s, %s) RETURNING id",
            (resource["resourceType"], resource["id"], last_updated, orjson.dumps(resource)),
        ).fetchone()[0]
        rows = extract_index(resource)
        for table, columns in INDEX_COLUMNS.items():
            values = getattr(rows, table)
            if not values:
                continue
            names = ", ".join(name for name, _ in columns)
            placeholders = ", ".join(["%s"] * (len(columns) + 2))
            padding = (None,) * len(columns)
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO search_{table} (resource_id, resource_type, {names}) VALUES ({placeholders})",
                    [(resource_id, resource["resourceType"], *(row + padding)[:len(columns)]) for row in values],
                )
    return resource_id


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(db: psycopg.Connection):
    """`store(resource, ...)` inserts resources for the test; returns their surrogate ids."""

    def insert(*resources: dict[str, Any]) -> list[int]:
        return [insert_for_test(db, resource) for resource in resources]

    return insert
