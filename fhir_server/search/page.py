"""Keyset paging: the opaque, signed `_page_token` that carries the position after (or before) a page."""

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from fhir_server.errors import FHIRError

PAGE_TOKEN = "_page_token"
# Guards against edited tokens and tokens reused with another query; it is not a secret, and it need not
# be one: a token only moves the position within results the query is allowed to see anyway.
_KEY = b"fhir-server search page token v2"
_TAG_BYTES = 12
LIFETIME = timedelta(hours=24)
"""Tokens of a search whose first page is older than this are refused (410): a snapshot bound (see
engine._sort_key) should not outlive a working day, nor should anyone page that slowly."""

SortKey = str | datetime | Decimal | None


@dataclass(frozen=True, slots=True)
class Position:
    """A row boundary in (sort keys..., resource.id) order; `forward` pages go after it, others before.

    `snapshot` is when the first page was read: every page of one search uses it (see engine._sort_key).
    """

    keys: tuple[SortKey, ...]
    resource_id: int
    forward: bool
    snapshot: datetime


def query_digest(parts: Any) -> bytes:
    return hashlib.sha256(orjson.dumps(parts)).digest()


def _encoded_key(key: SortKey) -> list[str] | None:
    if isinstance(key, datetime):
        return ["t", key.isoformat()]
    if isinstance(key, Decimal):
        return ["n", str(key)]
    if isinstance(key, str):
        return ["s", key]
    return None


def encode(position: Position, digest: bytes) -> str:
    body = orjson.dumps({"k": [_encoded_key(key) for key in position.keys], "i": position.resource_id,
                         "f": position.forward, "s": position.snapshot.isoformat()})
    tag = hmac.new(_KEY, digest + body, hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.urlsafe_b64encode(tag + body).decode().rstrip("=")


def decode(token: str, digest: bytes) -> Position:
    """The position in `token`; a 400 if it was altered or belongs to another query, a 410 if it expired."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        tag, body = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        expected = hmac.new(_KEY, digest + body, hashlib.sha256).digest()[:_TAG_BYTES]
        if not hmac.compare_digest(tag, expected):
            raise ValueError("bad tag")
        data = orjson.loads(body)
        resource_id, forward, keys = data["i"], data["f"], data["k"]
        if type(resource_id) is not int or type(forward) is not bool or type(keys) is not list:
            raise ValueError("bad fields")
        position = Position(tuple(_decoded_key(key) for key in keys), resource_id, forward,
                            datetime.fromisoformat(data["s"]))
    except (ValueError, TypeError, KeyError, InvalidOperation, orjson.JSONDecodeError):
        raise FHIRError.of(400, "invalid", "The page token is invalid, was altered, or belongs to another search",
                           PAGE_TOKEN) from None
    if datetime.now(timezone.utc) - position.snapshot > LIFETIME:
        raise FHIRError.of(410, "processing", "The page token has expired; run the search again from its first "
                                              "page", PAGE_TOKEN)
    return position


def _decoded_key(encoded: Any) -> SortKey:
    if encoded is None:
        return None
    kind, text = encoded
    if kind == "t":
        return datetime.fromisoformat(text)
    if kind == "n":
        return Decimal(text)
    if kind == "s" and isinstance(text, str):
        return text
    raise ValueError("bad key")
