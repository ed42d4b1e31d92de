"""The searchset Bundle, assembled as bytes around the stored resource JSON without re-parsing it."""

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson


def entry(full_url: str, content: bytes, mode: str) -> bytes:
    """A match or include entry around the stored resource JSON."""
    return (b'{"fullUrl":' + orjson.dumps(full_url) + b',"resource":' + content + b',"search":{"mode":"'
            + mode.encode() + b'"}}')


def outcome_entry(outcome: dict[str, Any]) -> bytes:
    return orjson.dumps({"resource": outcome, "search": {"mode": "outcome"}})


def searchset(links: list[tuple[str, str]], total: int | None, entries: list[bytes]) -> bytes:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": datetime.now(timezone.utc).isoformat(timespec="milliseconds")},
        "type": "searchset",
    }
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": relation, "url": url} for relation, url in links]
    body = orjson.dumps(head)
    if not entries:
        return body
    return body[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
