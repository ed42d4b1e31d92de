"""The searchset Bundle, assembled as bytes around the stored resource JSON without re-parsing it."""

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS_KEPT = ("resourceType", "id", "meta")


def match_entry(full_url: str, content: bytes) -> bytes:
    return b'{"fullUrl":' + orjson.dumps(full_url) + b',"resource":' + content + b',"search":{"mode":"match"}}'


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


def subset(content: bytes, summary: str | None, elements: list[str] | None) -> bytes:
    """Apply `_summary=text|data` or `_elements` to one stored resource; other content passes through."""
    resource = orjson.loads(content)
    if elements is not None:
        kept = {key: value for key, value in resource.items() if key in _ALWAYS_KEPT or key in elements}
    elif summary == "text":
        kept = {key: value for key, value in resource.items() if key in _ALWAYS_KEPT or key == "text"}
    else:  # data
        kept = {key: value for key, value in resource.items() if key != "text"}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return orjson.dumps(kept)
