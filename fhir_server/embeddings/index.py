"""The embedding index: each write of a resource with text schedules outbox work, and the job (in the worker)
chunks the current version's text, embeds it, and replaces the resource's chunks.

The job reads the resource as it is when it runs, so it is idempotent and order does not matter: chunks of
the current version and model already there → nothing to do; deleted, without text, or of a patient who
denied AI processing → no chunks.
"""

import asyncio
from datetime import datetime, timezone
from typing import Any

import orjson
from pgvector.psycopg.vector import register_vector_info
from psycopg import AsyncConnection
from psycopg.types import TypeInfo

from fhir_server.embeddings import chunking, sources
from fhir_server.embeddings.attachments import attachment_text
from fhir_server.embeddings.providers import EmbeddingUnavailable, provider
from fhir_server.search.compartment import ITSELF, compartments
from fhir_server.settings import Settings
from fhir_server.worker import outbox
from fhir_server.worker.jobs import Retry

TOPIC = "embed"
TARGET = "chunks"
PRIORITY = 5
"""After notifications and workflow work (lower runs first)."""

_vector_info: TypeInfo | None = None


async def adapt_vectors(conn: AsyncConnection) -> None:
    """Let psycopg send and read `vector` values (pgvector's adapters; the type is looked up once)."""
    global _vector_info
    if _vector_info is None:
        _vector_info = await TypeInfo.fetch(conn, "vector")
    register_vector_info(conn, _vector_info)


async def resource_written(conn: AsyncConnection, resource_type: str, fhir_id: str) -> None:
    """Side effect of a write (in its transaction): (re)compute this resource's chunks soon."""
    await outbox.schedule(conn, TOPIC, resource_type, fhir_id, targets=[TARGET], added=[TARGET],
                          due_at=datetime.now(timezone.utc), priority=PRIORITY)


async def schedule_patient(conn: AsyncConnection, patient: str) -> None:
    """Embed again everything of a patient (their consent denial was withdrawn), unless another denial stays."""
    await conn.execute(
        "INSERT INTO outbox (topic, resource_type, fhir_id, target, priority, due_at) "
        "SELECT DISTINCT %s, r.resource_type, r.fhir_id, %s, %s, now() FROM resource r "
        "WHERE NOT r.deleted AND NOT EXISTS (SELECT 1 FROM embedding_consent WHERE patient = %s) "
        "AND ((r.resource_type = 'Patient' AND r.fhir_id = %s) OR r.id IN (SELECT resource_id FROM search_reference "
        "     WHERE target_type = 'Patient' AND target_id = %s AND target_url IS NULL)) "
        "ON CONFLICT (topic, resource_type, fhir_id, target) WHERE state IN ('pending', 'queued', 'sending') "
        "DO NOTHING",
        (TOPIC, TARGET, PRIORITY, patient, patient, patient))


async def schedule_reembedding(conn: AsyncConnection, model: str) -> int:
    """Schedule every current resource whose chunks are of another model than `model`, or that may have text
    and has no chunks (after a change of provider or a restore); returns how many were scheduled."""
    cursor = await conn.execute(
        "INSERT INTO outbox (topic, resource_type, fhir_id, target, priority, due_at) "
        "SELECT %s, r.resource_type, r.fhir_id, %s, %s, now() FROM resource r WHERE NOT r.deleted AND ("
        "  EXISTS (SELECT 1 FROM embedding_chunk c WHERE c.resource_id = r.id AND c.model <> %s)"
        "  OR (NOT EXISTS (SELECT 1 FROM embedding_chunk c WHERE c.resource_id = r.id)"
        "      AND (r.resource_type = ANY(%s) OR convert_from(r.content, 'UTF8')::jsonb ? 'text'))) "
        "ON CONFLICT (topic, resource_type, fhir_id, target) WHERE state IN ('pending', 'queued', 'sending') "
        "DO NOTHING",
        (TOPIC, TARGET, PRIORITY, model, sorted(sources.PROSE_ELEMENTS)))
    return cursor.rowcount


def _patient_parameters(resource_type: str) -> tuple[list[str], bool]:
    """The reference parameters that put a resource of the type in a Patient compartment, and whether it is one."""
    params = compartments()["Patient"].get(resource_type, ())
    return [param for param in params if param != ITSELF], resource_type == "Patient"


async def _patients(conn: AsyncConnection, resource_pk: int, resource_type: str, fhir_id: str) -> list[str]:
    params, itself = _patient_parameters(resource_type)
    rows = await (await conn.execute(
        "SELECT DISTINCT target_id FROM search_reference WHERE resource_id = %s AND param = ANY(%s) "
        "AND target_type = 'Patient' AND target_url IS NULL", (resource_pk, params))).fetchall()
    return sorted({row[0] for row in rows} | ({fhir_id} if itself else set()))


async def text_of(conn: AsyncConnection, resource: dict[str, Any]) -> str:
    """Every piece of prose of `resource`, each once, as paragraphs."""
    texts, attachments = sources.prose(resource)
    for attachment in attachments:
        texts.append(await attachment_text(conn, attachment) or "")
    return "\n\n".join(dict.fromkeys(text.strip() for text in texts if text.strip()))


async def embed(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    """The job of topic `embed`: make the chunks of one resource match its current version."""
    current = await (await conn.execute(
        "SELECT id, version_id, deleted, content FROM resource WHERE resource_type = %s AND fhir_id = %s",
        (row.resource_type, row.fhir_id))).fetchone()
    embedder = provider(settings)
    if current is None or current[2] or embedder is None:
        await conn.execute("DELETE FROM embedding_chunk WHERE resource_type = %s AND fhir_id = %s",
                           (row.resource_type, row.fhir_id))
        return
    pk, version_id, _, content = current
    done = await (await conn.execute(
        "SELECT 1 FROM embedding_chunk WHERE resource_id = %s AND version_id = %s AND model = %s LIMIT 1",
        (pk, version_id, embedder.model))).fetchone()
    if done is not None:
        return
    patients = await _patients(conn, pk, row.resource_type, row.fhir_id)
    denied = await (await conn.execute("SELECT 1 FROM embedding_consent WHERE patient = ANY(%s) LIMIT 1",
                                       (patients,))).fetchone()
    chunks = [] if denied else chunking.chunks(await text_of(conn, orjson.loads(content)),
                                               settings.embeddings_chunk_chars, settings.embeddings_chunk_overlap)
    try:
        vectors = await asyncio.to_thread(embedder.embed, chunks) if chunks else []
    except EmbeddingUnavailable as error:
        raise Retry(str(error)) from None
    await adapt_vectors(conn)
    await conn.execute("DELETE FROM embedding_chunk WHERE resource_id = %s", (pk,))
    if chunks:
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO embedding_chunk (resource_id, resource_type, fhir_id, version_id, chunk_index, model, "
                "patients, text, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(pk, row.resource_type, row.fhir_id, version_id, index, embedder.model, patients, text, vector)
                 for index, (text, vector) in enumerate(zip(chunks, vectors))])
