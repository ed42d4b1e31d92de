"""Answers whose body is stored bytes rather than FHIR JSON, streamed from the object store."""

import asyncio
from dataclasses import dataclass
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from fhir_server.documents.store import ObjectStore
from fhir_server.errors import FHIRError
from fhir_server.request import Outcome


@dataclass(slots=True)
class ContentOutcome(Outcome):
    """An interaction's answer that is the bytes of an object (rendered by `content_response`)."""

    sha256: str = ""
    content_type: str = "application/octet-stream"
    filename: str | None = None
    size: int | None = None


async def content_response(outcome: ContentOutcome, store: ObjectStore) -> StreamingResponse:
    """The object's bytes, read chunk by chunk in a worker thread while they are sent."""
    headers = outcome.response_headers()
    if outcome.size is not None:
        headers["Content-Length"] = str(outcome.size)
    if outcome.filename:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(outcome.filename, safe='')}"
    headers["X-Content-Type-Options"] = "nosniff"
    try:
        chunks = await asyncio.to_thread(store.open, outcome.sha256)
    except FileNotFoundError:
        raise FHIRError.of(500, "exception", f"The stored content {outcome.sha256} is missing from the "
                                             "object store") from None
    return StreamingResponse(chunks, outcome.status, headers, media_type=outcome.content_type)
