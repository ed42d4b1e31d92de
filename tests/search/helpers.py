"""Running searches in tests: a query string in, the parsed searchset Bundle out."""

from typing import Any
from urllib.parse import parse_qsl

import orjson
import psycopg

from fhir_server.search.engine import search
from tests.search.conftest import BASE


async def run(conn: psycopg.AsyncConnection, resource_type: str | None, query: str = "", *,
              strict: bool = True) -> dict[str, Any]:
    pairs = parse_qsl(query, keep_blank_values=True)
    return orjson.loads(await search(conn, base_url=BASE, resource_type=resource_type, query=pairs, strict=strict))


async def ids(conn: psycopg.AsyncConnection, resource_type: str | None, query: str = "") -> list[str]:
    """The ids of the matches on the first page, in result order."""
    return match_ids(await run(conn, resource_type, query))


def link(found: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in found["link"] if item["relation"] == relation), None)


async def follow(conn: psycopg.AsyncConnection, url: str) -> dict[str, Any]:
    """Run the search a Bundle link points at, as a client following `next` would."""
    assert url.startswith(BASE)
    path, _, query = url[len(BASE):].partition("?")
    return await run(conn, path.strip("/") or None, query)


def match_ids(found: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in found.get("entry", []) if entry["search"]["mode"] == "match"]
