"""Keyset paging: the opaque `_page_token` that carries the position after (or before) a page."""

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from fhir_server.errors import FHIRError

PAGE_TOKEN = "_page_token"
# Guards against edited tokens and tokens reused with another query; it is not a secret, and it need not
# be one: a token only moves the position within results the query is allowed to see anyway.
_KEY = b"fhir-server search page token v1"
_TAG_BYTES = 12

SortKey = str | datetime | Decimal | None


@dataclass(frozen=True, slots=True)
class Position:
    """A row boundary in (sort key, resource.id) order; `forward` pages go after it, others before."""

    key: SortKey
    resource_id: int
    forward: bool


def query_digest(parts: Any) -> bytes:
    return hashlib.sha256(orjson.dumps(parts)).digest()


def encode(position: Position, digest: bytes) -> str:
    key = position.key
    if isinstance(key, datetime):
        encoded_key: list[str] | None = ["t", key.isoformat()]
    elif isinstance(key, Decimal):
        encoded_key = ["n", str(key)]
    elif isinstance(key, str):
        encoded_key = ["s", key]
    else:
        encoded_key = None
    body = orjson.dumps({"k": encoded_key, "i": position.resource_id, "f": position.forward})
    tag = hmac.new(_KEY, digest + body, hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.urlsafe_b64encode(tag + body).decode().rstrip("=")


def decode(token: str, digest: bytes) -> Position:
    """The position in `token`; a 400 if it was altered or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        tag, body = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        expected = hmac.new(_KEY, digest + body, hashlib.sha256).digest()[:_TAG_BYTES]
        if not hmac.compare_digest(tag, expected):
            raise ValueError("bad tag")
        data = orjson.loads(body)
        resource_id, forward = data["i"], data["f"]
        if type(resource_id) is not int or type(forward) is not bool:
            raise ValueError("bad fields")
        return Position(_decoded_key(data["k"]), resource_id, forward)
    except (ValueError, TypeError, KeyError, InvalidOperation, orjson.JSONDecodeError):
        raise FHIRError.of(400, "invalid", "The page token is invalid, was altered, or belongs to another search",
                           PAGE_TOKEN) from None


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
