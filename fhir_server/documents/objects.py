"""The `document_object` rows: one per stored object, and the rule that keeps garbage collection safe.

Every write that references an object first upserts its row (`last_seen = now()`), before the object is put
and in the same transaction as the resource when there is one. Garbage collection locks a row before it
deletes an object, and spares rows seen within the grace period, so an upload that re-uses an object the
collector is about to remove either waits for it (and uploads again) or keeps it alive.
"""

import asyncio
from dataclasses import dataclass

from psycopg import AsyncConnection

from fhir_server.documents.content import Content
from fhir_server.documents.store import ObjectStore


@dataclass(frozen=True, slots=True)
class StoredObject:
    sha256: str
    sha1_base64: str | None
    size: int | None
    content_type: str | None


_UPSERT = (
    "INSERT INTO document_object (sha256, sha1, size, content_type) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (sha256) DO UPDATE SET last_seen = now(), sha1 = coalesce(document_object.sha1, excluded.sha1), "
    "size = coalesce(document_object.size, excluded.size), "
    "content_type = coalesce(document_object.content_type, excluded.content_type)"
)


async def save(conn: AsyncConnection, store: ObjectStore, content: Content, content_type: str) -> None:
    """Record the object and put it in the store unless it is there already (identical bytes are stored once)."""
    await conn.execute(_UPSERT, (content.sha256, content.sha1_base64, content.size, content_type))
    if not await asyncio.to_thread(store.exists, content.sha256):
        await asyncio.to_thread(store.put, content.sha256, content.file, content_type)


async def touch(conn: AsyncConnection, sha256: str) -> StoredObject | None:
    """Mark a recorded object as in use now; None if it is not recorded."""
    row = await (await conn.execute(
        "UPDATE document_object SET last_seen = now() WHERE sha256 = %s RETURNING sha1, size, content_type",
        (sha256,))).fetchone()
    return StoredObject(sha256, *row) if row else None


async def lookup(conn: AsyncConnection, sha256: str) -> StoredObject | None:
    row = await (await conn.execute(
        "SELECT sha1, size, content_type FROM document_object WHERE sha256 = %s", (sha256,))).fetchone()
    return StoredObject(sha256, *row) if row else None
