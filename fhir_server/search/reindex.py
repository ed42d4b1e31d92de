"""Custom SearchParameters and reindexing: the registry from stored definitions, index rows rewritten in batches."""

from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.search.extract import INDEX_COLUMNS, storage_rows
from fhir_server.search.parameters import use_stored_search_parameters

BATCH_SIZE = 500
_REQUIRED_FIELDS = ("url", "code", "base", "type", "expression")

# One statement per batch, shaped like the storage layer's writes: sibling CTEs see the same snapshot,
# so the DELETEs remove only the old rows of the batch, never the ones inserted beside them.
_REWRITE_SQL = "WITH " + ", ".join(
    [f"d_{table} AS (DELETE FROM search_{table} WHERE resource_id = ANY(%(ids)s))" for table in INDEX_COLUMNS]
    + [f"i_{table} AS (INSERT INTO search_{table} (resource_id, resource_type, "
       f"{', '.join(name for name, _ in columns)}, contained_id) SELECT (e->>0)::bigint, "
       f"coalesce(e->>{len(columns) + 2}, e->>1), "
       f"{', '.join(f'(e->>{index + 2})::{kind}' for index, (_, kind) in enumerate(columns))}, "
       f"e->>{len(columns) + 3} FROM json_array_elements(%({table})s::json) AS e)"
       for table, columns in INDEX_COLUMNS.items()]
) + " SELECT 1"


def _usable(definition: Any) -> bool:
    return (isinstance(definition, dict) and definition.get("status") == "active"
            and all(definition.get(key) for key in _REQUIRED_FIELDS) and isinstance(definition["base"], list))


async def stored_search_parameters(conn: AsyncConnection) -> list[dict[str, Any]]:
    """The active SearchParameter resources stored on this server, in creation order."""
    cursor = await conn.execute(
        "SELECT content FROM resource WHERE resource_type = 'SearchParameter' AND NOT deleted ORDER BY id")
    definitions = [orjson.loads(row[0]) for row in await cursor.fetchall()]
    return [definition for definition in definitions if _usable(definition)]


async def load_stored_search_parameters(conn: AsyncConnection) -> int:
    """Make the stored SearchParameters part of the registry (at start-up and before a reindex)."""
    definitions = await stored_search_parameters(conn)
    use_stored_search_parameters(definitions)
    return len(definitions)


async def reindex(conn: AsyncConnection, resource_type: str | None, base_url: str | None,
                  batch_size: int = BATCH_SIZE) -> int:
    """Recompute the index rows of every current resource (of `resource_type`, or all); the count.

    Resources are read in id order, `batch_size` at a time, each batch locked and rewritten in its own
    transaction, so memory stays flat and concurrent writes are never overwritten by stale rows.
    """
    last_id, total = 0, 0
    type_filter = "AND resource_type = %s " if resource_type else ""
    while True:
        async with conn.transaction():
            cursor = await conn.execute(
                "SELECT id, resource_type, content FROM resource WHERE NOT deleted AND content IS NOT NULL "
                f"AND id > %s {type_filter}ORDER BY id LIMIT %s FOR UPDATE",
                [last_id, *([resource_type] if resource_type else []), batch_size])
            rows = await cursor.fetchall()
            if not rows:
                return total
            tables: dict[str, list[tuple]] = {table: [] for table in INDEX_COLUMNS}
            for pk, row_type, content in rows:
                for table, found in storage_rows(orjson.loads(content), base_url).items():
                    tables[table].extend((pk, row_type, *row) for row in found)
            parameters: dict[str, Any] = {"ids": [row[0] for row in rows]}
            for table, found_rows in tables.items():
                parameters[table] = orjson.dumps(found_rows, default=str).decode()
            await conn.execute(_REWRITE_SQL, parameters)
        total += len(rows)
        last_id = rows[-1][0]
