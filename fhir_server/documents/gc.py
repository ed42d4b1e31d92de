"""Garbage collection: remove stored objects that no version of any resource references, after a grace period.

Referenced means: some version (deletions and history included) of a Binary or DocumentReference contains
the object's SHA-256. Only objects whose row was last seen before the grace period are candidates, and each
is deleted under its row lock (see objects.py), so an upload racing the collector is never left without its
bytes. The grace period must exceed the longest write (an upload and its resource write).
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from psycopg import AsyncConnection

from fhir_server.documents.store import ObjectStore

REFERENCING_TYPES = ["Binary", "DocumentReference"]


@dataclass(slots=True)
class Collection:
    removed: int = 0
    removed_bytes: int = 0
    kept: int = 0


async def referenced_hashes(conn: AsyncConnection) -> set[str]:
    """Every SHA-256 (hex) that some version of the referencing types contains: a superset is safe here."""
    rows = await (await conn.execute(
        "SELECT DISTINCT m[1] FROM resource_version v, "
        "LATERAL regexp_matches(convert_from(v.content, 'UTF8'), '([0-9a-f]{64})', 'g') AS m "
        "WHERE v.resource_type = ANY(%s) AND v.content IS NOT NULL", (REFERENCING_TYPES,))).fetchall()
    return {row[0] for row in rows}


async def collect_garbage(conn: AsyncConnection, store: ObjectStore, grace: timedelta) -> Collection:
    """Remove unreferenced objects older than `grace`; `conn` must be in autocommit mode."""
    cutoff = (await (await conn.execute("SELECT now() - %s", (grace,))).fetchone())[0]
    referenced = await referenced_hashes(conn)
    listed = await asyncio.to_thread(lambda: list(store.list()))
    candidates = {sha256 for sha256, written in listed if written < cutoff}
    rows = await (await conn.execute("SELECT sha256 FROM document_object WHERE last_seen < %s", (cutoff,))).fetchall()
    candidates |= {row[0] for row in rows}
    collection, removed = Collection(), set()
    for sha256 in sorted(candidates - referenced):
        async with conn.transaction():
            # A row for an object found without one (its write rolled back), so that the lock below exists.
            await conn.execute("INSERT INTO document_object (sha256, last_seen) VALUES (%s, '-infinity') "
                               "ON CONFLICT (sha256) DO NOTHING", (sha256,))
            stale, size = await (await conn.execute(
                "SELECT last_seen < %s, size FROM document_object WHERE sha256 = %s FOR UPDATE",
                (cutoff, sha256))).fetchone()
            if not stale:
                continue
            await asyncio.to_thread(store.delete, sha256)
            await conn.execute("DELETE FROM document_object WHERE sha256 = %s", (sha256,))
        removed.add(sha256)
        collection.removed_bytes += size or 0
    collection.removed = len(removed)
    collection.kept = len({sha256 for sha256, _ in listed} - removed)
    return collection
