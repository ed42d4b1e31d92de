"""The resource repository: current rows, every version, and the search-index rows, written together."""

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import orjson
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from fhir_server import json_numbers
from fhir_server.errors import FHIRError, Issue
from fhir_server.search.extract import INDEX_COLUMNS, storage_rows
from fhir_server.worker import side_effects

HISTORICAL_TYPES = frozenset({"Provenance", "AuditEvent"})
"""Records of the past: they keep pointing at what they recorded (no retargeting by $merge, no 409 on delete)."""

# The index tables and their columns belong to the search package, which produces the rows.
INDEX_TABLES = INDEX_COLUMNS

# Every write is ONE statement: the resource row (CTE `w`), its version row, and the index rows, as
# data-modifying CTEs. Sibling CTEs see the same snapshot, so the DELETEs of an update remove only
# the old index rows, never the ones inserted beside them. With `w` empty (a create that lost a
# race, ON CONFLICT DO NOTHING) nothing else is written either.
_VERSION_CTE = (
    "v AS (INSERT INTO resource_version (resource_id, version_id, resource_type, fhir_id, last_updated, method, "
    "content) SELECT id, %(version_id)s, %(resource_type)s, %(fhir_id)s, %(last_updated)s, %(method)s, "
    "%(content)s FROM w)"
)
_DELETE_INDEX_CTES = ", ".join(
    f"d_{table} AS (DELETE FROM search_{table} WHERE resource_id = %(pk)s)" for table in INDEX_TABLES
)
# Each table's rows travel as one JSON array of arrays: one cheap parameter instead of a typed array
# per column, which psycopg would have to inspect element by element. A contained resource's row ends with
# its own resource_type and contained id (extract.storage_rows); the resource's own rows stop short of them.
_INSERT_INDEX_CTES = ", ".join(
    f"i_{table} AS (INSERT INTO search_{table} (resource_id, resource_type, "
    f"{', '.join(name for name, _ in columns)}, contained_id) SELECT w.id, "
    f"coalesce(e->>{len(columns)}, %(resource_type)s), "
    f"{', '.join(f'(e->>{index})::{kind}' for index, (_, kind) in enumerate(columns))}, e->>{len(columns) + 1} "
    f"FROM w, json_array_elements(%({table})s::json) AS e)"
    for table, columns in INDEX_TABLES.items()
)
# The audit_log record of the interaction (see `AuditRecord`) rides the write as one more CTE: written only
# if `w` wrote, and committed (or not) with it, without a round trip of its own.
_AUDIT_CTE = "a AS (INSERT INTO audit_log (id, event) SELECT %(audit_id)s::uuid, %(audit_event)s::bytea FROM w)"


def _statements(write: str, ctes: str) -> tuple[str, str]:
    """The write statement (CTE `w`, then `ctes`), without and with the audit record."""
    return (f"WITH w AS ({write} RETURNING id), {ctes} SELECT id FROM w",
            f"WITH w AS ({write} RETURNING id), {ctes}, {_AUDIT_CTE} SELECT id FROM w")


_INSERT_SQL = _statements(
    "INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
    "VALUES (%(resource_type)s, %(fhir_id)s, %(version_id)s, %(last_updated)s, %(content)s) "
    "ON CONFLICT (resource_type, fhir_id) DO NOTHING",
    f"{_VERSION_CTE}, {_INSERT_INDEX_CTES}")
_UPDATE_SQL = _statements(
    "UPDATE resource SET version_id = %(version_id)s, last_updated = %(last_updated)s, deleted = false, "
    "content = %(content)s WHERE id = %(pk)s",
    f"{_VERSION_CTE}, {_DELETE_INDEX_CTES}, {_INSERT_INDEX_CTES}")
_DELETE_SQL = _statements(
    "UPDATE resource SET version_id = %(version_id)s, last_updated = %(last_updated)s, deleted = true, "
    "content = NULL WHERE id = %(pk)s",
    f"{_VERSION_CTE}, {_DELETE_INDEX_CTES}")

# Many new resources of one type in one statement: the resource rows (ids and contents as arrays, sent in binary:
# psycopg's text format escapes each bytea element with a regex), their versions, and the index rows, each
# index row led by the fhir_id it belongs to.
_INSERT_MANY_SQL = (
    "WITH w AS (INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
    "SELECT %(resource_type)s, f, 1, %(last_updated)s, c FROM unnest(%(fhir_ids)b::text[], %(contents)b::bytea[]) "
    "AS u(f, c) RETURNING id, fhir_id, content), "
    "v AS (INSERT INTO resource_version (resource_id, version_id, resource_type, fhir_id, last_updated, method, "
    "content) SELECT id, 1, %(resource_type)s, fhir_id, %(last_updated)s, 'POST', content FROM w), "
    + ", ".join(
        f"i_{table} AS (INSERT INTO search_{table} (resource_id, resource_type, "
        f"{', '.join(name for name, _ in columns)}, contained_id) SELECT w.id, "
        f"coalesce(e->>{len(columns) + 1}, %(resource_type)s), "
        f"{', '.join(f'(e->>{index + 1})::{kind}' for index, (_, kind) in enumerate(columns))}, "
        f"e->>{len(columns) + 2} FROM json_array_elements(%({table})s::json) AS e JOIN w ON w.fhir_id = e->>0)"
        for table, columns in INDEX_TABLES.items()
    )
    + " SELECT count(*) FROM w"
)

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
        return json_numbers.loads(self.content) if self.content else {}


@dataclass(slots=True)
class AuditRecord:
    """The audit_log record of a write interaction, built from the version it writes (`event(stored, created)`
    gives the record's id and AuditEvent JSON).

    The audit interceptor sets one in `audit_record` around a write; the interaction's first write of
    `resource_type` (and `fhir_id`, when the request names it) stores it in its own statement, so a plain
    create is one round trip in autocommit and still cannot commit without its audit record.
    """

    resource_type: str
    fhir_id: str | None
    event: Callable[[StoredResource, bool], tuple[str, bytes]]
    written: bool = False

    def takes(self, stored: StoredResource) -> bool:
        return not self.written and stored.resource_type == self.resource_type \
            and self.fhir_id in (None, stored.fhir_id)


audit_record: ContextVar[AuditRecord | None] = ContextVar("audit_record", default=None)


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
    return json_numbers.dumps(body)


def _without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """The content an update is compared on: everything but id, versionId and lastUpdated."""
    comparable = {key: value for key, value in resource.items() if key not in ("id", "meta")}
    meta = {key: value for key, value in (resource.get("meta") or {}).items()
            if key not in ("versionId", "lastUpdated")}
    if meta:
        comparable["meta"] = meta
    return comparable


def _unchanged(current: dict[str, Any], resource: dict[str, Any]) -> bool:
    """Whether an update would write the same content: compared as JSON text, where `1.50` is not `1.5`."""
    return json_numbers.dumps(_without_server_meta(current), orjson.OPT_SORT_KEYS) \
        == json_numbers.dumps(_without_server_meta(resource), orjson.OPT_SORT_KEYS)


async def read(conn: AsyncConnection, resource_type: str, fhir_id: str, *, for_update: bool = False
               ) -> StoredResource | None:
    query = _SELECT_CURRENT + (" FOR UPDATE" if for_update else "")
    row = await (await conn.execute(query, (resource_type, fhir_id), prepare=True)).fetchone()
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


async def _write(conn: AsyncConnection, statements: tuple[str, str], stored: StoredResource, method: str,
                 resource: dict[str, Any] | None, base_url: str | None = None, created: bool = False) -> int | None:
    """Run the write statement (`_statements`) for `stored`, with the interaction's audit record if it is
    the write that record is waiting for; returns the resource row id, None if nothing was written."""
    params: dict[str, Any] = {
        "pk": stored.pk, "resource_type": stored.resource_type, "fhir_id": stored.fhir_id,
        "version_id": stored.version_id, "last_updated": stored.last_updated, "method": method,
        "content": stored.content,
    }
    if resource is not None:
        for table, rows in storage_rows(resource, base_url).items():
            params[table] = orjson.dumps(rows, default=str).decode()
    record = audit_record.get()
    audited = record is not None and record.takes(stored)
    if audited:
        params["audit_id"], params["audit_event"] = record.event(stored, created)
    row = await (await conn.execute(statements[audited], params, prepare=True)).fetchone()
    if row is None:
        return None
    if audited:
        record.written = True
    return row[0]


async def _after_write(conn: AsyncConnection, resource_type: str, fhir_id: str, resource: dict[str, Any] | None,
                       previous: StoredResource | None) -> None:
    """Run the side-effect hooks of the write (worker/side_effects.py) in its transaction."""
    before = previous.json() if previous is not None and not previous.deleted else None
    for hook in side_effects.hooks(resource_type, resource, before):
        await hook(conn, fhir_id, resource, before)


async def _insert(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str, method: str,
                  base_url: str | None) -> StoredResource | None:
    """Insert version 1 under `fhir_id`; None if a resource with that id exists already."""
    moment = _now()
    stored = StoredResource(0, resource["resourceType"], fhir_id, 1, moment, False,
                            _stamp(resource, fhir_id, 1, moment))
    pk = await _write(conn, _INSERT_SQL, stored, method, resource, base_url, created=True)
    if pk is None:
        return None
    stored.pk = pk
    return stored


async def create(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str | None = None, *,
                 base_url: str | None = None) -> StoredResource:
    """Insert a new resource with a server-assigned id (or `fhir_id`), as version 1.

    `base_url` is this server's base: references below it are indexed as the `Type/id` they stand for.
    """
    hooks = side_effects.hooks(resource["resourceType"], resource, None)
    if hooks and conn.info.transaction_status == TransactionStatus.IDLE:
        # A plain create runs in autocommit; its side effects must commit with it (types without hooks
        # keep their single round trip).
        async with conn.transaction():
            return await create(conn, resource, fhir_id, base_url=base_url)
    fhir_id = fhir_id or new_id()
    stored = await _insert(conn, resource, fhir_id, "POST", base_url)
    if stored is None:
        raise FHIRError.of(409, "duplicate", f"{resource['resourceType']}/{fhir_id} already exists")
    for hook in hooks:
        await hook(conn, fhir_id, resource, None)
    return stored


async def create_many(conn: AsyncConnection, resources: list[dict[str, Any]], *,
                      base_url: str | None = None, keep_ids: bool = False) -> list[StoredResource]:
    """Insert many new resources of one type (server-assigned ids, or their own with `keep_ids`) in one statement.

    The side-effect hooks do not run: the caller records the side effects of the whole batch itself.
    """
    if not resources:
        return []
    resource_type = resources[0]["resourceType"]
    if any(resource["resourceType"] != resource_type for resource in resources):
        raise ValueError("create_many takes resources of one type")
    moment = _now()
    stored = []
    index_rows: dict[str, list[list[Any]]] = {table: [] for table in INDEX_TABLES}
    for resource in resources:
        fhir_id = resource["id"] if keep_ids else new_id()
        stored.append(StoredResource(0, resource_type, fhir_id, 1, moment, False,
                                     _stamp(resource, fhir_id, 1, moment)))
        for table, rows in storage_rows(resource, base_url).items():
            index_rows[table] += [[fhir_id, *row] for row in rows]
    await conn.execute(_INSERT_MANY_SQL, {
        "resource_type": resource_type, "last_updated": moment, "fhir_ids": [item.fhir_id for item in stored],
        "contents": [item.content for item in stored],
        **{table: orjson.dumps(rows, default=str).decode() for table, rows in index_rows.items()},
    })
    return stored


async def update(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str, *, if_match: int | None = None,
                 method: str = "PUT", base_url: str | None = None) -> tuple[StoredResource, bool]:
    """Write a new version of `resource`; create it under `fhir_id` if absent. Returns (stored, created).

    An update whose content equals the current version writes nothing and returns the current version.
    """
    resource_type = resource["resourceType"]
    current = await read(conn, resource_type, fhir_id, for_update=True)
    if current is None:
        if if_match is not None:
            raise FHIRError.of(412, "conflict", f"{resource_type}/{fhir_id} does not exist, so If-Match cannot match")
        stored = await _insert(conn, resource, fhir_id, method, base_url)
        if stored is not None:
            await _after_write(conn, resource_type, fhir_id, resource, None)
            return stored, True
        # Another transaction created it meanwhile: this becomes an update of that version.
        current = await read(conn, resource_type, fhir_id, for_update=True)
        assert current is not None
    if if_match is not None and if_match != current.version_id:
        raise FHIRError.of(412, "conflict",
                           f"If-Match version {if_match} does not match the current version {current.version_id} "
                           f"of {resource_type}/{fhir_id}")
    if not current.deleted and _unchanged(current.json(), resource):
        return current, False
    moment = _now()
    version_id = current.version_id + 1
    stored = StoredResource(current.pk, resource_type, fhir_id, version_id, moment, False,
                            _stamp(resource, fhir_id, version_id, moment))
    await _write(conn, _UPDATE_SQL, stored, method, resource, base_url, created=current.deleted)
    await _after_write(conn, resource_type, fhir_id, resource, current)
    return stored, current.deleted


async def delete(conn: AsyncConnection, resource_type: str, fhir_id: str) -> StoredResource | None:
    """Logically delete: a new version without content. Returns the deletion, or None if nothing to delete."""
    current = await read(conn, resource_type, fhir_id, for_update=True)
    if current is None or current.deleted:
        return None
    stored = StoredResource(current.pk, resource_type, fhir_id, current.version_id + 1, _now(), True, None)
    await _write(conn, _DELETE_SQL, stored, "DELETE", None)
    await _after_write(conn, resource_type, fhir_id, None, current)
    return stored


async def referrers(conn: AsyncConnection, targets: list[tuple[str, str]], limit: int = 50) -> list[tuple[str, str, str]]:
    """Current resources that still reference any of `targets` ((type, id) pairs), as (referrer, type, id).

    Records of the past (AuditEvent, Provenance) do not count: they keep naming what was deleted.
    """
    if not targets:
        return []
    types, ids = zip(*targets)
    rows = await (await conn.execute(
        "SELECT DISTINCT r.resource_type || '/' || r.fhir_id, t.target_type, t.target_id "
        "FROM unnest(%s::text[], %s::text[]) AS t(target_type, target_id) "
        "JOIN search_reference sr ON sr.target_type = t.target_type AND sr.target_id = t.target_id "
        "JOIN resource r ON r.id = sr.resource_id "
        "WHERE NOT r.deleted AND NOT (r.resource_type = t.target_type AND r.fhir_id = t.target_id) "
        "AND sr.resource_type <> ALL(%s) ORDER BY 1 LIMIT %s",
        (list(types), list(ids), sorted(HISTORICAL_TYPES), limit),
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
                  before: tuple[datetime, int, int] | None, types: frozenset[str] | None = None,
                  visible: tuple[str, list[Any]] | None = None) -> list[HistoryEntry]:
    """Versions newest first, keyset-paged on (last_updated, resource_id, version_id) below `before`.

    `at` keeps, per resource, the version current at that moment; `types` (None = all) limits system history to
    what the caller may read; `visible` (SQL over the current resource `r`, and its arguments) keeps the
    versions of the resources it matches.
    """
    conditions, args = [], []
    if types is not None:
        conditions.append("v.resource_type = ANY(%s)")
        args.append(sorted(types))
    if visible is not None:
        conditions.append(f"v.resource_id IN (SELECT r.id FROM resource r WHERE {visible[0]})")
        args += visible[1]
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
