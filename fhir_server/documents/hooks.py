"""What writes of Binary and DocumentReference do, on every path (HTTP, Bundle entries, import).

A Binary's base64 `data` goes to the object store and the resource keeps the content hash instead (inline
`data` of a DocumentReference attachment becomes such a Binary, which the attachment's `url` names); a hash the
client sends must be one this request uploaded or the one the Binary already has (so nobody can point a
Binary at an object they never had). DocumentReference attachments that name a stored Binary get
`size`, `hash` (SHA-1) and the SHA-256 extension from the server.
"""

import asyncio
import base64
import binascii
from contextvars import ContextVar
from functools import partial
from typing import Any

from psycopg import AsyncConnection

from fhir_server.documents import content as received
from fhir_server.documents import objects
from fhir_server.documents.mime import SNIFF_BYTES, media_type, require_allowed, require_signature
from fhir_server.documents.references import (attachment_binary, content_hash, set_attachment_hash,
                                              set_content_hash)
from fhir_server.documents.store import object_store
from fhir_server.errors import FHIRError
from fhir_server.settings import get_settings
from fhir_server.storage import repository

uploaded: ContextVar[frozenset[str]] = ContextVar("uploaded", default=frozenset())
"""Hashes of the objects the current request has stored from a raw body (interactions/binary.py)."""


async def before_write(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str | None,
                       base_url: str | None) -> None:
    """Called by the write interactions before the resource is stored (through `identity.before_write`)."""
    resource_type = resource.get("resourceType")
    if resource_type == "Binary":
        await _binary(conn, resource, fhir_id)
    elif resource_type == "DocumentReference":
        await _document_reference(conn, resource, base_url)


async def _binary(conn: AsyncConnection, binary: dict[str, Any], fhir_id: str | None) -> None:
    settings = get_settings()
    if "data" in binary:
        media = require_allowed(binary.get("contentType") or "", settings.document_mime_types)
        try:
            data = base64.b64decode(binary["data"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise FHIRError.of(400, "invalid", "Binary.data is not valid base64", "Binary.data") from None
        content = received.from_bytes(data, settings.document_max_bytes, partial(require_signature, media))
        await objects.save(conn, object_store(settings), content, media)
        set_content_hash(binary, content.sha256)
        return
    sha256 = content_hash(binary)
    if sha256 is None:
        return
    media = require_allowed(binary.get("contentType") or "", settings.document_mime_types)
    if sha256 not in uploaded.get():
        current = await repository.read(conn, "Binary", fhir_id) if fhir_id else None
        kept = current.json() if current is not None and not current.deleted else {}
        if content_hash(kept) != sha256:
            raise FHIRError.of(400, "invalid", "The content hash of a Binary is set by the server; send the bytes "
                                               "as Binary.data or as the raw request body", "Binary.data")
        if media != media_type(kept.get("contentType") or ""):
            await _require_stored_signature(sha256, media)
    if await objects.touch(conn, sha256) is None:
        raise FHIRError.of(400, "invalid", f"No stored content has the hash {sha256}", "Binary.data")


async def _require_stored_signature(sha256: str, media: str) -> None:
    """A changed contentType must still agree with the stored bytes."""
    chunks = await asyncio.to_thread(object_store(get_settings()).open, sha256)
    first = await asyncio.to_thread(next, chunks, b"")
    chunks.close()
    require_signature(media, first[:SNIFF_BYTES])


def inline_attachments(resource: dict[str, Any]) -> bool:
    """Whether a DocumentReference carries bytes inline, which its write moves to a Binary (in its transaction)."""
    return resource.get("resourceType") == "DocumentReference" and any(
        isinstance(item, dict) and isinstance(item.get("attachment"), dict) and "data" in item["attachment"]
        for item in resource.get("content") or ())


async def _move_inline(conn: AsyncConnection, attachment: dict[str, Any], subject: Any) -> None:
    """Inline bytes become a Binary of their own (checked like any upload); the attachment then points at it.

    The document's subject becomes the Binary's securityContext, so that whoever may read that subject's
    data may read the bytes directly, as with $download."""
    binary: dict[str, Any] = {"resourceType": "Binary", "contentType": attachment.get("contentType") or "",
                              "data": attachment.pop("data")}
    if isinstance(subject, dict) and isinstance(subject.get("reference"), str):
        binary["securityContext"] = {"reference": subject["reference"]}
    await _binary(conn, binary, None)
    stored = await repository.create(conn, binary)
    attachment["url"] = f"Binary/{stored.fhir_id}"


async def _document_reference(conn: AsyncConnection, document: dict[str, Any], base_url: str | None) -> None:
    for item in document.get("content") or ():
        attachment = item.get("attachment") if isinstance(item, dict) else None
        if isinstance(attachment, dict) and "data" in attachment:
            await _move_inline(conn, attachment, document.get("subject"))
        binary = await attachment_binary(conn, attachment, base_url)
        if binary is None:
            continue
        sha256 = content_hash(binary.json())
        stored = await objects.touch(conn, sha256)
        if stored is None:
            continue
        if stored.size is not None:
            attachment["size"] = stored.size
        if stored.sha1_base64 is not None:
            attachment["hash"] = stored.sha1_base64
        set_attachment_hash(attachment, sha256)
        attachment.setdefault("contentType", binary.json().get("contentType"))
