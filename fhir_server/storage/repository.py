"""The resource repository: current rows, every version, and the search-index rows, written together."""

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.search.extract import extract_index

INDEX_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "string": (("param", "text"), ("value", "text"), ("value_exact", "text")),
    "token": (("param", "text"), ("system", "text"), ("code", "text"), ("text", "text")),
    "date": (("param", "text"), ("low", "timestamptz"), ("high", "timestamptz")),
    "number": (("param", "text"), ("value", "numeric"), ("low", "numeric"), ("high", "numeric")),
    "quantity": (("param", "text"), ("value", "numeric"), ("low", "numeric"), ("high", "numeric"),
                 ("system", "text"), ("code", "text"), ("unit", "text")),
    "uri": (("param", "text"), ("value", "text")),
    "reference": (("param", "text"), ("target_type", "text"), ("target_id", "text"), ("target_url", "text")),
}

# One INSERT ... SELECT FROM unnest(...) per index table: set-based, one round trip per table.
_INSERT_INDEX = {
    table: (
        f"INSERT INTO search_{table} (resource_id, resource_type, {', '.join(name for name, _ in columns)}) "
        f"SELECT %s, %s, u.* FROM unnest({', '.join(f'%s::{kind}[]' for _, kind in columns)}) AS u"
    )
    for table, columns in INDEX_TABLES.items()
}
# One statement (data-modifying CTEs) clears every index table of a resource.
_DELETE_INDEX = "WITH " + ", ".join(
    f"d_{table} AS (DELETE FROM search_{table} WHERE resource_id = %(pk)s)" for table in list(INDEX_TABLES)[:-1]
) + f" DELETE FROM search_{list(INDEX_TABLES)[-1]} WHERE resource_id = %(pk)s"

_SELECT_CURRENT = (
    "SELECT id, version_id, last_updated, deleted, content FROM resource WHERE resource_type = %s AND fhir_id = %s"
)


@dataclass(slots=True)
class StoredResource:
    """One version of a resource as stored: `content` is its JSON, None for a deletion."""

    pk: int
    resource_type: str
    fhir_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: bytes | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    def json(self) -> dict[str, Any]:
        return orjson.loads(self.content) if self.content else {}


def _now() -> datetime:
    """The current time at the millisecond precision of meta.lastUpdated, so stored and shown times agree."""
    moment = datetime.now(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_id() -> str:
    return str(uuid4())


def instant(moment: datetime) -> str:
    """A FHIR instant with millisecond precision in UTC."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stamp(resource: dict[str, Any], fhir_id: str, version_id: int, moment: datetime) -> bytes:
    """Serialise `resource` with the server-owned id and meta, `resourceType`, `id` and `meta` first."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant(moment)
    body = {"resourceType": resource["resourceType"], "id": fhir_id, "meta": meta}
    body.update((key, value) for key, value in resource.items() if key not in body)
    return orjson.dumps(body)


def _without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """The content an update is compared on: everything but id, versionId and lastUpdated."""
    comparable = {key: value for key, value in resource.items() if key not in ("id", "meta")}
    meta = {key: value for key, value in (resource.get("meta") or {}).items()
            if key not in ("versionId", "lastUpdated")}
    if meta:
        comparable["meta"] = meta
    return comparable


async def read(conn: AsyncConnection, resource_type: str, fhir_id: str, *, for_update: bool = False
               ) -> StoredResource | None:
    query = _SELECT_CURRENT + (" FOR UPDATE" if for_update else "")
    row = await (await conn.execute(query, (resource_type, fhir_id))).fetchone()
    if row is None:
        return None
    return StoredResource(row[0], resource_type, fhir_id, row[1], row[2], row[3], row[4])


async def vread(conn: AsyncConnection, resource_type: str, fhir_id: str, version_id: int) -> StoredResource | None:
    row = await (await conn.execute(
        "SELECT v.resource_id, v.last_updated, v.content FROM resource r "
        "JOIN resource_version v ON v.resource_id = r.id "
        "WHERE r.resource_type = %s AND r.fhir_id = %s AND v.version_id = %s",
        (resource_type, fhir_id, version_id),
    )).fetchone()
    if row is None:
        return None
    return StoredResource(row[0], resource_type, fhir_id, version_id, row[1], row[2] is None, row[2])


async def _write_index(conn: AsyncConnection, pk: int, resource_type: str, resource: dict[str, Any] | None,
                       replace: bool) -> None:
    if replace:
        await conn.execute(_DELETE_INDEX, {"pk": pk})
    if resource is None:
        return
    rows = extract_index(resource)
    for table, columns in INDEX_TABLES.items():
        table_rows = getattr(rows, table)
        if table_rows:
            await conn.execute(_INSERT_INDEX[table], (pk, resource_type, *map(list, zip(*table_rows))))


async def _append_version(conn: AsyncConnection, stored: StoredResource, method: str) -> None:
    await conn.execute(
        "INSERT INTO resource_version (resource_id, version_id, resource_type, fhir_id, last_updated, method, content)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (stored.pk, stored.version_id, stored.resource_type, stored.fhir_id, stored.last_updated, method,
         stored.content),
    )


async def create(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str | None = None) -> StoredResource:
    """Insert a new resource with a server-assigned id (or `fhir_id`), as version 1."""
    resource_type = resource["resourceType"]
    fhir_id = fhir_id or new_id()
    moment = _now()
    content = _stamp(resource, fhir_id, 1, moment)
    row = await (await conn.execute(
        "INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
        "VALUES (%s, %s, 1, %s, %s) ON CONFLICT (resource_type, fhir_id) DO NOTHING RETURNING id",
        (resource_type, fhir_id, moment, content),
    )).fetchone()
    if row is None:
        raise FHIRError.of(409, "duplicate", f"{resource_type}/{fhir_id} already exists")
    stored = StoredResource(row[0], resource_type, fhir_id, 1, moment, False, content)
    await _append_version(conn, stored, "POST")
    await _write_index(conn, stored.pk, resource_type, resource, replace=False)
    return stored


async def update(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str, *, if_match: int | None = None,
                 method: str = "PUT") -> tuple[StoredResource, bool]:
    """Write a new version of `resource`; create it under `fhir_id` if absent. Returns (stored, created).

    An update whose content equals the current version writes nothing and returns the current version.
    """
    resource_type = resource["resourceType"]
    current = await read(conn, resource_type, fhir_id, for_update=True)
    if current is None:
        if if_match is not None:
            raise FHIRError.of(412, "conflict", f"{resource_type}/{fhir_id} does not exist, so If-Match cannot match")
        moment = _now()
        content = _stamp(resource, fhir_id, 1, moment)
        row = await (await conn.execute(
            "INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
            "VALUES (%s, %s, 1, %s, %s) ON CONFLICT (resource_type, fhir_id) DO NOTHING RETURNING id",
            (resource_type, fhir_id, moment, content),
        )).fetchone()
        if row is not None:
            stored = StoredResource(row[0], resource_type, fhir_id, 1, moment, False, content)
            await _append_version(conn, stored, method)
            await _write_index(conn, stored.pk, resource_type, resource, replace=False)
            return stored, True
        # Another transaction created it meanwhile: this becomes an update of that version.
        current = await read(conn, resource_type, fhir_id, for_update=True)
        assert current is not None
    if if_match is not None and if_match != current.version_id:
        raise FHIRError.of(412, "conflict",
                           f"If-Match version {if_match} does not match the current version {current.version_id} "
                           f"of {resource_type}/{fhir_id}")
    if not current.deleted and _without_server_meta(current.json()) == _without_server_meta(resource):
        return current, False
    moment = _now()
    version_id = current.version_id + 1
    content = _stamp(resource, fhir_id, version_id, moment)
    await conn.execute(
        "UPDATE resource SET version_id = %s, last_updated = %s, deleted = false, content = %s WHERE id = %s",
        (version_id, moment, content, current.pk),
    )
    stored = StoredResource(current.pk, resource_type, fhir_id, version_id, moment, False, content)
    await _append_version(conn, stored, method)
    await _write_index(conn, stored.pk, resource_type, resource, replace=True)
    return stored, current.deleted


async def delete(conn: AsyncConnection, resource_type: str, fhir_id: str) -> StoredResource | None:
    """Logically delete: a new version without content. Returns the deletion, or None if nothing to delete."""
    current = await read(conn, resource_type, fhir_id, for_update=True)
    if current is None or current.deleted:
        return None
    moment = _now()
    stored = StoredResource(current.pk, resource_type, fhir_id, current.version_id + 1, moment, True, None)
    await conn.execute(
        "UPDATE resource SET version_id = %s, last_updated = %s, deleted = true, content = NULL WHERE id = %s",
        (stored.version_id, moment, current.pk),
    )
    await _append_version(conn, stored, "DELETE")
    await _write_index(conn, stored.pk, resource_type, None, replace=True)
    return stored


async def referrers(conn: AsyncConnection, targets: list[tuple[str, str]], limit: int = 50) -> list[tuple[str, str, str]]:
    """Current resources that still reference any of `targets` ((type, id) pairs), as (referrer, type, id)."""
    if not targets:
        return []
    types, ids = zip(*targets)
    rows = await (await conn.execute(
        "SELECT DISTINCT r.resource_type || '/' || r.fhir_id, t.target_type, t.target_id "
        "FROM unnest(%s::text[], %s::text[]) AS t(target_type, target_id) "
        "JOIN search_reference sr ON sr.target_type = t.target_type AND sr.target_id = t.target_id "
        "JOIN resource r ON r.id = sr.resource_id "
        "WHERE NOT r.deleted AND NOT (r.resource_type = t.target_type AND r.fhir_id = t.target_id) "
        "ORDER BY 1 LIMIT %s",
        (list(types), list(ids), limit),
    )).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


async def ensure_not_referenced(conn: AsyncConnection, targets: list[tuple[str, str]]) -> None:
    """Refuse (409) deletions that would leave references dangling; every referrer is listed."""
    found = await referrers(conn, targets)
    if found:
        raise FHIRError(409, [
            Issue("conflict", f"{referrer} still references {target_type}/{target_id}", expression=(referrer,))
            for referrer, target_type, target_id in found
        ])


@dataclass(slots=True)
class HistoryEntry:
    version: StoredResource
    method: str


async def history(conn: AsyncConnection, *, resource_type: str | None, fhir_id: str | None,
                  since: datetime | None, at: datetime | None, count: int,
                  before: tuple[datetime, int, int] | None) -> list[HistoryEntry]:
    """Versions newest first, keyset-paged on (last_updated, resource_id, version_id) below `before`.

    `at` keeps, per resource, the version current at that moment.
    """
    conditions, args = [], []
    if resource_type is not None:
        conditions.append("v.resource_type = %s")
        args.append(resource_type)
    if fhir_id is not None:
        conditions.append("v.fhir_id = %s")
        args.append(fhir_id)
    if since is not None:
        conditions.append("v.last_updated >= %s")
        args.append(since)
    if at is not None:
        conditions.append("v.last_updated <= %s AND NOT EXISTS (SELECT 1 FROM resource_version w "
                          "WHERE w.resource_id = v.resource_id AND w.version_id > v.version_id "
                          "AND w.last_updated <= %s)")
        args += [at, at]
    if before is not None:
        conditions.append("(v.last_updated, v.resource_id, v.version_id) < (%s, %s, %s)")
        args += list(before)
    where = " AND ".join(conditions) or "true"
    rows = await (await conn.execute(
        "SELECT v.resource_id, v.resource_type, v.fhir_id, v.version_id, v.last_updated, v.content, v.method "
        f"FROM resource_version v WHERE {where} "
        "ORDER BY v.last_updated DESC, v.resource_id DESC, v.version_id DESC LIMIT %s",
        (*args, count),
    )).fetchall()
    return [HistoryEntry(StoredResource(r[0], r[1], r[2], r[3], r[4], r[5] is None, r[5]), r[6]) for r in rows]
