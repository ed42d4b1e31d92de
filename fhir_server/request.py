"""The parsed FHIR request every interaction takes, and the outcome every interaction returns."""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import orjson

from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.storage.repository import StoredResource

JSON_CONTENT_TYPE = "application/fhir+json; charset=utf-8"


@dataclass(slots=True)
class FHIRRequest:
    """One request, from HTTP or from a Bundle entry: the interaction is decided from these fields."""

    method: str
    base_url: str
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    compartment_type: str | None = None
    operation: str | None = None
    history: bool = False
    search: bool = False
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case header names."""
    body: Any = None
    """The parsed JSON body, if any."""
    principal: Any = None
    """The authenticated caller (`auth.enforce.Principal`), None when authorization is off."""
    restriction: Any = None
    """What a search may return to this caller (`search.engine.Restriction`), set by authorization."""
    assigned_id: str | None = None
    """The id a transaction assigned to a create whose fullUrl others reference."""
    deferred_reference_check: bool = False
    """A transaction checks references to deleted resources once, after all its entries ..."""
    deleted_targets: list[tuple[str, str]] = field(default_factory=list)
    """... the (type, id) pairs its deletes leave here for that check."""
    audit: Any = None
    """Where the interaction's AuditEvent goes (`audit.interceptor.AuditContext`); None = not audited."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def prefer(self, key: str) -> str | None:
        """A token of the Prefer header, e.g. prefer("return") -> "minimal"."""
        for part in (self.headers.get("prefer") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"').lower()
        return None

    def query_values(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


@dataclass(slots=True)
class Outcome:
    """An interaction's answer: status, body bytes and the FHIR headers."""

    status: int
    body: bytes | None = None
    etag: str | None = None
    last_modified: datetime | None = None
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.etag:
            headers["ETag"] = self.etag
        if self.last_modified:
            headers["Last-Modified"] = format_datetime(self.last_modified.astimezone(timezone.utc), usegmt=True)
        if self.location:
            headers["Location"] = self.location
        return headers


def resource_outcome(status: int, stored: StoredResource, base_url: str, *, location: bool = False) -> Outcome:
    """The outcome of a read or write of one resource version, with ETag, Last-Modified and Location."""
    url = f"{base_url}/{stored.resource_type}/{stored.fhir_id}/_history/{stored.version_id}"
    return Outcome(status, stored.content, stored.etag, stored.last_updated, url if location else None)


def error_outcome(error: FHIRError) -> Outcome:
    return Outcome(error.status, orjson.dumps(operation_outcome(error.issues)), headers=dict(error.headers))


def informational(message: str, status: int = 200) -> Outcome:
    return Outcome(status, orjson.dumps(operation_outcome([Issue("informational", message, severity="information")])))


def parse_version_tag(value: str | None, header: str) -> int | None:
    """The version number of an ETag value such as `W/"3"` (as sent in If-Match / If-None-Match)."""
    if value is None:
        return None
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit():
        raise FHIRError.of(400, "invalid", f'{header} must be a version ETag like W/"1", got {value!r}', header)
    return int(tag)
