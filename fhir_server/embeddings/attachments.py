"""The text content of attachments: plain text and PDF (pypdf), inline or from the document store."""

import asyncio
import base64
import binascii
import io
import logging
from typing import Any

from psycopg import AsyncConnection

from fhir_server.documents.mime import media_type
from fhir_server.documents.references import attachment_binary, content_hash
from fhir_server.documents.store import object_store
from fhir_server.settings import get_settings

log = logging.getLogger(__name__)

TEXT_TYPES = frozenset({"text/plain", "application/pdf"})


async def attachment_text(conn: AsyncConnection, attachment: dict[str, Any]) -> str | None:
    """The title and the text of a plain-text or PDF attachment; None when it has neither."""
    title = attachment.get("title") if isinstance(attachment.get("title"), str) else None
    media = media_type(attachment.get("contentType") or "")
    data: bytes | None = None
    if isinstance(attachment.get("data"), str):
        try:
            data = base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            data = None
    else:
        binary = await attachment_binary(conn, attachment, None)
        if binary is not None:
            media = media or media_type(binary.json().get("contentType") or "")
            if media in TEXT_TYPES:
                data = await asyncio.to_thread(_stored_bytes, content_hash(binary.json()))
    body = await asyncio.to_thread(_extract, media, data) if data is not None and media in TEXT_TYPES else None
    return "\n\n".join(part for part in (title, body) if part) or None


def _stored_bytes(sha256: str) -> bytes | None:
    try:
        return b"".join(object_store(get_settings()).open(sha256))
    except FileNotFoundError:
        return None


def _extract(media: str, data: bytes) -> str | None:
    if media == "text/plain":
        return data.decode("utf-8", errors="replace")
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)
    except (PyPdfError, ValueError, KeyError) as error:
        log.warning("no text from a PDF attachment: %s", error)
        return None
