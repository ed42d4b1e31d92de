"""DocumentReference/[id]/$download: the bytes an attachment names, as a presigned URL (S3) or streamed (filesystem).

Authorized like reading the DocumentReference (dispatch checks "r" and the patient compartment); the
Binary's own securityContext is not consulted, since holding the DocumentReference is what grants it.
"""

import asyncio
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.documents import objects
from fhir_server.documents.references import attachment_binary, content_hash
from fhir_server.documents.responses import ContentOutcome
from fhir_server.documents.store import object_store
from fhir_server.errors import FHIRError
from fhir_server.interactions.read import read
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.settings import get_settings

DEFINITION = operation_definition("DocumentReference-download")


def _attachments(document: dict[str, Any], req: FHIRRequest) -> list[Any]:
    contents = [item.get("attachment") for item in document.get("content") or () if isinstance(item, dict)]
    index = req.query_values("index")
    if not index:
        return contents
    if len(index) > 1 or not index[0].isdigit() or int(index[0]) >= len(contents):
        raise FHIRError.of(400, "invalid", f"index must be one of 0..{len(contents) - 1}", "index")
    return [contents[int(index[0])]]


async def download(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    document = await read(conn, FHIRRequest("GET", req.base_url, "DocumentReference", req.id))  # 404, 410
    for attachment in _attachments(orjson.loads(document.body), req):
        binary = await attachment_binary(conn, attachment, req.base_url)
        if binary is not None:
            break
    else:
        raise FHIRError.of(404, "not-found", f"DocumentReference/{req.id} has no attachment naming a stored Binary")
    settings = get_settings()
    sha256 = content_hash(binary.json())
    content_type = binary.json().get("contentType") or "application/octet-stream"
    url = await asyncio.to_thread(object_store(settings).presigned_url, sha256, content_type,
                                  attachment.get("title"), settings.presign_seconds)
    if url is not None:
        return Outcome(303, location=url, headers={"Cache-Control": "no-store"})
    stored = await objects.lookup(conn, sha256)
    return ContentOutcome(200, sha256=sha256, content_type=content_type, filename=attachment.get("title"),
                          size=stored.size if stored else None)
