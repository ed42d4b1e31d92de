"""Steps shared by the write interactions: validating the body, conditional matching under a lock."""

from typing import Any
from urllib.parse import parse_qsl

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.search.engine import find_matches
from fhir_server.validation import validate_resource


def require_resource(body: Any, resource_type: str) -> dict[str, Any]:
    """The request body as a valid resource of `resource_type`, or 400 listing every problem."""
    if body is None:
        raise FHIRError.of(400, "required", f"A {resource_type} resource is required in the request body")
    issues = validate_resource(body, resource_type)
    if issues:
        raise FHIRError(400, issues)
    return body


def parse_condition(condition: str) -> list[tuple[str, str]]:
    """The search parameters of a conditional header or URL (`identifier=x` or `Patient?identifier=x`)."""
    query = condition.partition("?")[2] if "?" in condition else condition
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise FHIRError.of(400, "invalid", f"The condition '{condition}' has no search parameters")
    return params


async def matches_locked(conn: AsyncConnection, resource_type: str, query: list[tuple[str, str]]
                         ) -> list[tuple[int, str, int]]:
    """Up to two matches of a conditional operation, serialised against concurrent identical conditions.

    The transaction-scoped advisory lock makes a second identical conditional create wait until the
    first commits; its search then sees the first's resource instead of creating a duplicate.
    """
    key = resource_type + "?" + "&".join(f"{name}={value}" for name, value in sorted(query))
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
    return await find_matches(conn, resource_type, query, limit=2)
