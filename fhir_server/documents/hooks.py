"""What writes of Binary, DocumentReference and Communication do, on every path (HTTP, Bundle entries, import).

A Binary's base64 `data` goes to the object store and the resource keeps the content hash instead (inline
`data` of a DocumentReference attachment becomes such a Binary, which the attachment's `url` names); a hash the
client sends must be one this request uploaded or the one the Binary already has (so nobody can point a
Binary at an object they never had). DocumentReference attachments that name a stored Binary get
`size`, `hash` (SHA-1) and the SHA-256 extension from the server.

The attachments of a secure message (a Communication with a message category, messaging/threads.py), e.g. a
photo in a thread, are documents too: inline `data` of a `payload.contentAttachment` becomes a Binary in the
same way; an attachment that names a Binary gets its size and hashes, and must name stored content (else 422),
and so must a `payload.contentReference` to a local Binary or DocumentReference. Other Communications (e.g.
claim attachments) are stored as sent.
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
from fhir_server.documents.references import (attachment_binary, binary_target, content_hash, set_attachment_hash,
                                              set_content_hash)
from fhir_server.documents.store import object_store
from fhir_server.errors import FHIRError
from fhir_server.identity.references import local_target
from fhir_server.messaging import threads
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
    elif resource_type == "Communication" and threads.category(resource) is not None:
        await _message_attachments(conn, resource, base_url)


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


def _attachments(resource: dict[str, Any]) -> list[Any]:
    """The Attachments whose bytes belong in the object store: a DocumentReference's content, a thread
    message's payload."""
    if resource.get("resourceType") == "DocumentReference":
        return [item.get("attachment") for item in resource.get("content") or () if isinstance(item, dict)]
    if resource.get("resourceType") == "Communication" and threads.category(resource) is not None:
        return [part.get("contentAttachment") for part in resource.get("payload") or () if isinstance(part, dict)]
    return []


def inline_attachments(resource: dict[str, Any]) -> bool:
    """Whether a resource carries bytes inline, which its write moves to a Binary (in its transaction)."""
    return any(isinstance(attachment, dict) and "data" in attachment for attachment in _attachments(resource))


async def _move_inline(conn: AsyncConnection, attachment: dict[str, Any], subject: Any) -> None:
    """Inline bytes become a Binary of their own (checked like any upload); the attachment then points at it.

    The resource's subject becomes the Binary's securityContext, so that whoever may read that subject's
    data may read the bytes directly, as with $download."""
    binary: dict[str, Any] = {"resourceType": "Binary", "contentType": attachment.get("contentType") or "",
                              "data": attachment.pop("data")}
    if isinstance(subject, dict) and isinstance(subject.get("reference"), str):
        binary["securityContext"] = {"reference": subject["reference"]}
    await _binary(conn, binary, None)
    stored = await repository.create(conn, binary)
    attachment["url"] = f"Binary/{stored.fhir_id}"


async def _describe_attachment(conn: AsyncConnection, attachment: Any, base_url: str | None) -> bool:
    """Give an Attachment naming a stored Binary its size and hashes; False when it names no stored content."""
    binary = await attachment_binary(conn, attachment, base_url)
    if binary is None:
        return False
    sha256 = content_hash(binary.json())
    stored = await objects.touch(conn, sha256)
    if stored is None:
        return False
    if stored.size is not None:
        attachment["size"] = stored.size
    if stored.sha1_base64 is not None:
        attachment["hash"] = stored.sha1_base64
    set_attachment_hash(attachment, sha256)
    attachment.setdefault("contentType", binary.json().get("contentType"))
    return True


async def _document_reference(conn: AsyncConnection, document: dict[str, Any], base_url: str | None) -> None:
    for attachment in _attachments(document):
        if isinstance(attachment, dict) and "data" in attachment:
            await _move_inline(conn, attachment, document.get("subject"))
        await _describe_attachment(conn, attachment, base_url)


async def _message_attachments(conn: AsyncConnection, communication: dict[str, Any], base_url: str | None) -> None:
    for index, part in enumerate(communication.get("payload") or ()):
        if not isinstance(part, dict):
            continue
        path = f"Communication.payload[{index}]"
        attachment = part.get("contentAttachment")
        if isinstance(attachment, dict) and "data" in attachment:
            await _move_inline(conn, attachment, communication.get("subject"))
        if isinstance(attachment, dict) and attachment.get("url") is not None and binary_target(
                attachment["url"], base_url) is not None and not await _describe_attachment(conn, attachment, base_url):
            raise FHIRError.of(422, "invalid", f"{attachment['url']} is not a stored Binary with content",
                               path + ".contentAttachment.url")
        reference = (part.get("contentReference") or {}).get("reference")
        target = local_target(reference, base_url) if isinstance(reference, str) else None
        if target is not None and target[0] in ("Binary", "DocumentReference"):
            stored = await repository.read(conn, *target)
            if stored is None or stored.deleted:
                raise FHIRError.of(422, "invalid", f"{reference} does not exist", path + ".contentReference")
