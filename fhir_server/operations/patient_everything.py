"""Patient/[id]/$everything: the Patient, everything that references it, and what those reference.

"Everything that references it" is read from the reference index (search_reference), so any resource with a
reference to the Patient anywhere in it belongs, not only those the R4 compartment definition lists. Resources
they reference (Practitioner, Organization, Medication, ...) come along, other Patients excepted. One
set-based query per page, in resource row order with a keyset: nothing is gathered in memory beyond a page.
"""

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from psycopg import AsyncConnection

from fhir_server.auth.scopes import AUDIT_TYPES
from fhir_server.errors import FHIRError
from fhir_server.identity import replaced
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.resource_types import require_known_type
from fhir_server.search import bundle, page
from fhir_server.search.values import FAR_FUTURE, FAR_PAST, date_range
from fhir_server.settings import get_settings

DEFINITION = operation_definition("Patient-everything")
_PARAMETERS = ("start", "end", "_since", "_type", "_count")


def _date(name: str, value: str, high: bool) -> datetime:
    try:
        low_end, high_end = date_range(value)
    except ValueError:
        raise FHIRError.of(400, "invalid", f"{name} must be a FHIR date or dateTime, got {value!r}", name) from None
    return high_end if high else low_end


def _single(req: FHIRRequest, name: str) -> str | None:
    values = req.query_values(name)
    if len(values) > 1:
        raise FHIRError.of(400, "invalid", f"{name} may be given only once", name)
    return values[0] if values else None


def _page_query(patient_id: str, start: datetime | None, end: datetime | None, since: datetime | None,
                types: list[str] | None, after: int | None, count: int,
                hidden_label: tuple[str, str] | None = None) -> tuple[str, list[Any]]:
    # The compartment: resources with a reference to the Patient, those without any date in [start, end]
    # left out; then the Patient itself and what the compartment and the Patient reference.
    date_filter, date_args = "", []
    if start is not None or end is not None:
        date_filter = ("AND (NOT EXISTS (SELECT 1 FROM search_date d WHERE d.resource_id = c.resource_id) "
                       "OR EXISTS (SELECT 1 FROM search_date d WHERE d.resource_id = c.resource_id "
                       "AND d.high >= %s AND d.low <= %s))")
        date_args = [start or FAR_PAST, end or FAR_FUTURE]
    conditions, args = ["NOT r.deleted"], []
    if since is not None:
        conditions.append("r.last_updated >= %s")
        args.append(since)
    if types is not None:
        conditions.append("r.resource_type = ANY(%s)")
        args.append(types)
    else:  # the audit trail is no part of the record: it comes only when _type names it
        conditions.append("r.resource_type <> ALL(%s)")
        args.append(sorted(AUDIT_TYPES))
    if after is not None:
        conditions.append("r.id > %s")
        args.append(after)
    if hidden_label is not None:
        conditions.append("NOT EXISTS (SELECT 1 FROM search_token h WHERE h.resource_id = r.id "
                          "AND h.param = '_security' AND h.system = %s AND h.code = %s)")
        args.extend(hidden_label)
    sql = (
        "WITH patient AS (SELECT id FROM resource WHERE resource_type = 'Patient' AND fhir_id = %s AND NOT deleted), "
        "compartment AS (SELECT DISTINCT c.resource_id AS id FROM search_reference c "
        f"WHERE c.target_type = 'Patient' AND c.target_id = %s AND c.target_url IS NULL {date_filter}), "
        "sources AS (SELECT id FROM compartment UNION SELECT id FROM patient), "
        "referenced AS (SELECT x.id FROM sources s JOIN search_reference sr ON sr.resource_id = s.id "
        "JOIN resource x ON x.resource_type = sr.target_type AND x.fhir_id = sr.target_id "
        "WHERE sr.target_url IS NULL AND sr.target_type <> 'Patient'), "
        "members AS (SELECT id FROM sources UNION SELECT id FROM referenced) "
        "SELECT r.id, r.resource_type, r.fhir_id, r.content FROM resource r JOIN members m ON m.id = r.id "
        f"WHERE {' AND '.join(conditions)} ORDER BY r.id LIMIT %s"
    )
    return sql, [patient_id, patient_id, *date_args, *args, count + 1]


async def everything(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    row = await (await conn.execute(
        "SELECT deleted FROM resource WHERE resource_type = 'Patient' AND fhir_id = %s", (req.id,))).fetchone()
    if row is None:
        raise FHIRError.of(404, "not-found", f"Patient/{req.id} is not known")
    if row[0]:
        raise FHIRError.of(410, "deleted", f"Patient/{req.id} was deleted")
    moved = (await replaced.replacements(conn, [req.id])).get(req.id)
    if moved:
        raise FHIRError.of(400, "business-rule", f"Patient/{req.id} was merged into Patient/{moved}: ask for "
                                                 f"Patient/{moved}/$everything")

    settings = get_settings()
    start, end, since = _single(req, "start"), _single(req, "end"), _single(req, "_since")
    types = None
    if req.query_values("_type"):
        types = [require_known_type(kind.strip()) for value in req.query_values("_type")
                 for kind in value.split(",") if kind.strip()]
    if types is not None and AUDIT_TYPES & set(types) and req.principal is not None \
            and not req.principal.may_read_audit():
        raise FHIRError.of(403, "forbidden", "AuditEvents need a scope naming AuditEvent (e.g. user/AuditEvent.rs)")
    count_text = _single(req, "_count")
    if count_text is not None and not count_text.isdigit():
        raise FHIRError.of(400, "invalid", "_count must be a non-negative integer", "_count")
    count = min(int(count_text) if count_text else settings.default_page_size, settings.max_page_size)
    kept = [(name, value) for name, value in req.query if name in _PARAMETERS]
    digest = page.query_digest(["everything", req.id, sorted(kept)])
    token = _single(req, page.PAGE_TOKEN)
    position = page.decode(token, digest) if token else None
    after = position.resource_id if position else None
    snapshot = position.snapshot if position else datetime.now(timezone.utc)

    sql, args = _page_query(req.id, _date("start", start, False) if start else None,
                            _date("end", end, True) if end else None,
                            _date("_since", since, False) if since else None, types, after, count,
                            req.restriction.hidden_label if req.restriction is not None else None)
    rows = await (await conn.execute(sql, args)).fetchall() if count else []
    more = len(rows) > count
    rows = rows[:count]

    url = f"{req.base_url}/Patient/{req.id}/$everything"

    def link(extra: list[tuple[str, str]]) -> str:
        parameters = kept + extra
        return url + ("?" + urlencode(parameters, safe=":|,/") if parameters else "")

    links = [("self", link([(page.PAGE_TOKEN, token)] if token else []))]
    if token or more:
        links.append(("first", link([])))
    if more:
        links.append(("next", link([(page.PAGE_TOKEN, page.encode(page.Position((), rows[-1][0], True, snapshot), digest))])))
    entries = [bundle.entry(f"{req.base_url}/{kind}/{fhir_id}", content, "match")
               for _, kind, fhir_id, content in rows]
    return Outcome(200, bundle.searchset(links, None if token or more else len(entries), entries))
