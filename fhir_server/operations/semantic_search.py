"""$semantic-search (system and type level): resources whose text is near a query in meaning and in words.

Two rankings of chunks (embedding_chunk) are fused by weighted reciprocal rank: vector similarity to the
query's embedding (cosine, HNSW) and PostgreSQL full-text rank (any of the query's words). Both are limited
in SQL by the standard search filters of the request and by what the caller may see (authorization adds
its filters and compartment exactly as for a search), and leave out patients whose Consent denies AI
processing. A resource scores by its best chunk, whose text comes with the hit.
"""

import asyncio
import re

import orjson
from psycopg import AsyncConnection

from fhir_server.embeddings.index import adapt_vectors
from fhir_server.embeddings.providers import EmbeddingUnavailable, provider
from fhir_server.errors import FHIRError
from fhir_server.operations import parameters as params
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search import bundle, value_sets
from fhir_server.search.engine import filter_condition, parse_types
from fhir_server.settings import get_settings

DEFINITION = operation_definition("semantic-search")
MATCHED_TEXT = "http://fhir-server.dev/StructureDefinition/semantic-search-match"
DEFAULT_COUNT = 10
MAX_COUNT = 100
RRF_K = 60
"""The usual constant of reciprocal rank fusion: rank r scores weight / (RRF_K + r)."""
KEYWORD_SCAN = 500
"""Full-text matches ranked at most per request, so that a word found in most chunks costs no more than this
(ranking is the costly part: ~10 µs a chunk with ts_rank, twice that with ts_rank_cd)."""
_WORD = re.compile(r"\w+")
_OWN = frozenset({"query", "_count", "_type"})

_VISIBLE = "NOT (c.patients && ARRAY(SELECT patient FROM embedding_consent))"


def _query(req: FHIRRequest) -> list[tuple[str, str]]:
    """The query string, with the body's Parameters (valueString and the like) added as name=value pairs."""
    pairs = list(req.query)
    for parameter in params.parameter_list(req):
        value = params.value(parameter, "String", "Integer", "PositiveInt", "Code", "Uri", "Reference")
        if isinstance(value, dict):
            value = value.get("reference")
        if value is None or not isinstance(parameter.get("name"), str):
            raise FHIRError.of(400, "invalid", "Each parameter of $semantic-search takes a string value",
                               str(parameter.get("name")))
        pairs.append((parameter["name"], str(value)))
    return pairs


def _any_word(text: str) -> str:
    """A to_tsquery text matching any word of `text` (stop words are dropped by PostgreSQL)."""
    return " | ".join(f"'{word}'" for word in dict.fromkeys(_WORD.findall(text.lower())))


def _one(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in pairs if key == name]
    if len(values) > 1:
        raise FHIRError.of(400, "invalid", f"The parameter '{name}' may be given only once", name)
    return values[0] if values else None


async def semantic_search(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    settings = get_settings()
    pairs = _query(req)
    text = (_one(pairs, "query") or "").strip()
    if not text:
        raise FHIRError.of(400, "required", "$semantic-search needs a non-empty 'query'", "query")
    count_text = _one(pairs, "_count")
    if count_text is not None and not count_text.isdigit():
        raise FHIRError.of(400, "invalid", "_count must be a non-negative integer", "_count")
    count = min(int(count_text) if count_text is not None else DEFAULT_COUNT, MAX_COUNT)
    type_text = _one(pairs, "_type")
    if type_text is not None and req.resource_type is not None:
        raise FHIRError.of(400, "invalid", "_type applies to $semantic-search across all types only", "_type")
    types = parse_types(type_text) if type_text is not None else []
    filters = [(name, value) for name, value in pairs if name not in _OWN]
    parsed = filter_condition(req.resource_type, types, filters, req.prefer("handling") == "strict", req.base_url,
                              req.restriction)
    if types:
        parsed.condition.add("r.resource_type = ANY(%s)", types)
    await value_sets.resolve(conn, parsed.condition.args)
    embedder = provider(settings)
    if embedder is None:
        raise FHIRError.of(400, "not-supported", "Semantic search is off on this server (FHIR_EMBEDDINGS=off)")
    try:
        [vector] = await asyncio.to_thread(embedder.embed, [text])
    except EmbeddingUnavailable as error:
        raise FHIRError.of(503, "transient", f"The embedding service did not answer: {error}") from None

    where, where_args = parsed.condition.where(), parsed.condition.args
    candidates = settings.semantic_candidates
    sql = _hybrid_sql(where)
    vector_weight, keyword_weight = settings.semantic_vector_weight, settings.semantic_keyword_weight
    args = [_any_word(text), vector, embedder.model, *where_args, vector, candidates, 1 - settings.semantic_min_similarity,
            embedder.model, *where_args, KEYWORD_SCAN,
            vector_weight, RRF_K, keyword_weight, RRF_K, candidates, count]
    async with conn.transaction():
        await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        await conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(candidates, 1000))}")
        await adapt_vectors(conn)
        rows = await (await conn.execute(sql, args)).fetchall()
    best_possible = (vector_weight + keyword_weight) / (RRF_K + 1) or 1.0
    entries = [_entry(req.base_url, *row, best_possible) for row in rows]
    self_url = f"{req.base_url}/{req.resource_type + '/' if req.resource_type else ''}${DEFINITION.code}"
    return Outcome(200, bundle.searchset([("self", self_url)], len(entries), entries))


def _hybrid_sql(where: str) -> str:
    """The one statement of a search, over chunks of resources `r` that satisfy `where`."""
    return (
        # A constant query lets the planner weigh the words (and pick the GIN index for rare ones).
        "WITH q AS (SELECT to_tsquery('english', %s) AS query), "
        # relaxed_order lets HNSW go on past ef_search while filters reject rows: rank by distance again.
        "vec AS (SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM ("
        "  SELECT c.id, c.embedding <=> %s AS distance FROM embedding_chunk c JOIN resource r ON r.id = c.resource_id"
        f" WHERE c.model = %s AND {_VISIBLE} AND {where} ORDER BY c.embedding <=> %s LIMIT %s) v "
        "  WHERE distance <= %s), "
        "kw AS (SELECT id, row_number() OVER (ORDER BY ts_rank(document, query) DESC, id) AS rank FROM ("
        "  SELECT c.id, c.document, q.query FROM q, embedding_chunk c JOIN resource r ON r.id = c.resource_id"
        f" WHERE c.document @@ q.query AND c.model = %s AND {_VISIBLE} AND {where} LIMIT %s) k), "
        "fused AS (SELECT id, sum(score) AS score FROM ("
        "  SELECT id, %s / (%s + rank) AS score FROM vec"
        "  UNION ALL SELECT id, %s / (%s + rank) FROM (SELECT * FROM kw ORDER BY rank LIMIT %s) kw_top) s GROUP BY id), "
        "best AS (SELECT DISTINCT ON (c.resource_id) c.resource_id, c.text, f.score FROM fused f "
        "  JOIN embedding_chunk c ON c.id = f.id ORDER BY c.resource_id, f.score DESC) "
        "SELECT r.resource_type, r.fhir_id, r.content, b.text, b.score FROM best b JOIN resource r ON r.id = b.resource_id "
        "ORDER BY b.score DESC, r.id LIMIT %s"
    )


def _entry(base_url: str, resource_type: str, fhir_id: str, content: bytes, text: str, score: float,
           best_possible: float) -> bytes:
    search = {"extension": [{"url": MATCHED_TEXT, "valueString": text}], "mode": "match",
              "score": round(float(score) / best_possible, 4)}
    return (b'{"fullUrl":' + orjson.dumps(f"{base_url}/{resource_type}/{fhir_id}") + b',"resource":' + content
            + b',"search":' + orjson.dumps(search) + b"}")
