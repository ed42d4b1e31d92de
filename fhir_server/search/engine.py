"""The search interaction (a searchset Bundle as bytes) and the matching behind conditional operations."""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import psycopg

from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.search import bundle, page
from fhir_server.search.parameters import parameters_for
from fhir_server.search.query import (
    INDEX_TABLES, RESULT_PARAMETERS, Condition, invalid, parse_query, unsupported,
)
from fhir_server.settings import get_settings

SUMMARY_VALUES = frozenset({"true", "text", "data", "count", "false"})
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
# Index column a sort reads, ascending and descending (a date range sorts by its start, or its end).
_SORT_COLUMNS = {"string": ("value", "value"), "token": ("code", "code"), "date": ("low", "high"),
                 "number": ("value", "value"), "quantity": ("value", "value"), "uri": ("value", "value")}


@dataclass(frozen=True, slots=True)
class Sort:
    name: str
    key_sql: str
    """SQL of the sort key of resource `r`, with `%s` placeholders for `key_args`."""
    key_args: tuple[Any, ...]
    descending: bool


@dataclass(slots=True)
class ResultOptions:
    count: int
    sort: Sort | None
    summary: str | None
    total: str | None
    elements: list[str] | None
    page_token: str | None
    link_parameters: list[tuple[str, str]]
    """Result parameters repeated in every link (all but `_page_token`)."""
    ignored: list[str]


async def search(conn: psycopg.AsyncConnection, *, base_url: str, resource_type: str | None,
                 query: list[tuple[str, str]], strict: bool) -> bytes:
    """Run a type-level (or, with `resource_type=None`, system-level) search; the searchset Bundle as JSON."""
    base_url = base_url.rstrip("/")
    options = _result_options(resource_type, query, strict)
    parsed = parse_query(resource_type, query, strict=strict, base_url=base_url)
    ignored = parsed.unknown + options.ignored
    search_url = base_url + ("/" + resource_type if resource_type else "")
    link_parameters = parsed.accepted + options.link_parameters

    def link(extra: list[tuple[str, str]]) -> str:
        parameters = link_parameters + extra
        return search_url + ("?" + urlencode(parameters, safe=":|,/") if parameters else "")

    self_link = link([(page.PAGE_TOKEN, options.page_token)] if options.page_token else [])
    outcome = [bundle.outcome_entry(_ignored_outcome(ignored, resource_type))] if ignored else []
    condition = parsed.condition

    if options.summary == "count":
        total = await _count(conn, condition) if options.total != "estimate" else await _estimate(conn, condition)
        return bundle.searchset([("self", self_link)], total, outcome)

    digest = page.query_digest([resource_type, parsed.accepted, options.sort.name if options.sort else None])
    position = page.decode(options.page_token, digest) if options.page_token else None
    rows, more = await _page_rows(conn, condition, options.sort, position, options.count)

    links = [("self", self_link)]
    paged = position is not None or more
    if paged:
        links.append(("first", link([])))
    forward = position is None or position.forward
    # Rows lie beyond this page in the direction it was fetched when `more`; the other way, when it
    # was reached through a token (an empty page reached so gets neither link).
    has_next = more if forward else True
    has_previous = position is not None if forward else more
    if rows and has_next:
        last = rows[-1]
        links.append(("next", link([(page.PAGE_TOKEN, page.encode(page.Position(last[4], last[0], True), digest))])))
    if rows and has_previous:
        first = rows[0]
        links.append(("previous",
                      link([(page.PAGE_TOKEN, page.encode(page.Position(first[4], first[0], False), digest))])))

    total = None
    if options.total == "accurate":
        total = await _count(conn, condition)
    elif options.total == "estimate":
        total = await _estimate(conn, condition)
    elif options.total is None and not paged and options.count > 0:
        total = len(rows)  # the whole result is on this page: the total is known for free

    subsetting = options.elements is not None or options.summary in ("text", "data")
    entries = [
        bundle.match_entry(f"{base_url}/{row_type}/{fhir_id}",
                           bundle.subset(content, options.summary, options.elements) if subsetting else content)
        for _, row_type, fhir_id, content, _ in rows
    ]
    return bundle.searchset(links, total, outcome + entries)


async def find_matches(conn: psycopg.AsyncConnection, resource_type: str, query: list[tuple[str, str]],
                       limit: int = 2, *, base_url: str | None = None) -> list[tuple[int, str, int]]:
    """Up to `limit` current resources matching a conditional URL's query, as (resource.id, fhir_id, version_id).

    Always strict: an unknown parameter is a 400. Result parameters (`_count`, `_sort`, ...) are ignored;
    an empty query matches every resource of the type.
    """
    condition = parse_query(resource_type, query, strict=True, base_url=base_url).condition
    cursor = await conn.execute(
        f"SELECT r.id, r.fhir_id, r.version_id FROM resource r WHERE {condition.where()} ORDER BY r.id LIMIT %s",
        [*condition.args, limit])
    return [(row[0], row[1], row[2]) for row in await cursor.fetchall()]


def _result_options(resource_type: str | None, query: list[tuple[str, str]], strict: bool) -> ResultOptions:
    settings = get_settings()
    options = ResultOptions(settings.default_page_size, None, None, None, None, None, [], [])
    for name, value in query:
        if name not in RESULT_PARAMETERS:
            continue
        if name == page.PAGE_TOKEN:
            options.page_token = value
            continue
        keep = True
        if name == "_count":
            if not value.isdigit():
                raise invalid(name, "_count must be a non-negative integer")
            options.count = min(int(value), settings.max_page_size)
        elif name == "_sort":
            keep = _parse_sort(options, resource_type, value, strict)
        elif name == "_summary":
            if value not in SUMMARY_VALUES:
                raise invalid(name, f"_summary must be one of {', '.join(sorted(SUMMARY_VALUES))}")
            if value == "true":
                if strict:
                    raise unsupported(name, resource_type, "_summary=true is not supported")
                options.ignored.append("_summary=true")
                keep = False
            else:
                options.summary = None if value == "false" else value
        elif name == "_total":
            if value not in TOTAL_VALUES:
                raise invalid(name, f"_total must be one of {', '.join(sorted(TOTAL_VALUES))}")
            options.total = value
        elif name == "_elements":
            options.elements = [element.strip().rpartition(".")[2] for element in value.split(",") if element.strip()]
        if keep:
            options.link_parameters.append((name, value))
    return options


def _parse_sort(options: ResultOptions, resource_type: str | None, value: str, strict: bool) -> bool:
    """Set `options.sort` from `_sort`; only one key is supported. False when the parameter is ignored."""
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise invalid("_sort", "no sort key")
    problem = None
    if len(keys) > 1:
        problem = f"_sort on more than one parameter ({value}) is not supported"
    name = keys[0]
    descending = name.startswith("-")
    code = name.lstrip("-")
    parameter = parameters_for(resource_type).get(code)
    if parameter is None or (parameter.type not in _SORT_COLUMNS and code not in ("_id", "_lastUpdated")):
        problem = problem or f"cannot sort by '{code}'"
    if problem:
        if strict:
            raise unsupported("_sort", resource_type, problem)
        options.ignored.append(f"_sort={value}")
        return False
    assert parameter is not None
    if code == "_id":
        options.sort = Sort(name, "r.fhir_id", (), descending)
    elif code == "_lastUpdated":
        options.sort = Sort(name, "r.last_updated", (), descending)
    else:
        column = _SORT_COLUMNS[parameter.type][1 if descending else 0]
        aggregate = "max" if descending else "min"
        type_filter = "s.resource_type = r.resource_type AND " if resource_type else ""
        options.sort = Sort(
            name,
            f"(SELECT {aggregate}(s.{column}) FROM {INDEX_TABLES[parameter.type]} s "
            f"WHERE s.resource_id = r.id AND {type_filter}s.param = %s)",
            (parameter.code,), descending)
    return True


async def _page_rows(conn: psycopg.AsyncConnection, condition: Condition, sort: Sort | None,
                     position: page.Position | None, count: int) -> tuple[list[tuple], bool]:
    """One page in (sort key, resource.id) order after/before `position`, and whether more rows lie beyond."""
    if count == 0:
        return [], False
    forward = position is None or position.forward
    ascending = (sort is None or not sort.descending) == forward
    op, direction = (">", "ASC") if ascending else ("<", "DESC")
    key_sql, key_args = (sort.key_sql, list(sort.key_args)) if sort else ("NULL::text", [])
    keyset, keyset_args = "true", []
    if position is not None:
        keyset, keyset_args = _keyset(sort is not None, position, forward, op)
    nulls_order = "" if sort is None else f"(q.k IS NULL) {'ASC' if forward else 'DESC'}, q.k {direction}, "
    sql = (f"SELECT q.id, q.resource_type, q.fhir_id, q.content, q.k FROM ("
           f"SELECT r.id, r.resource_type, r.fhir_id, r.content, {key_sql} AS k FROM resource r "
           f"WHERE {condition.where()}) q WHERE {keyset} ORDER BY {nulls_order}q.id {direction} LIMIT %s")
    cursor = await conn.execute(sql, [*key_args, *condition.args, *keyset_args, count + 1])
    rows = await cursor.fetchall()
    more = len(rows) > count
    rows = rows[:count]
    if not forward:
        rows.reverse()
    return rows, more


def _keyset(sorted_: bool, position: page.Position, forward: bool, op: str) -> tuple[str, list[Any]]:
    """Rows strictly beyond `position` in the page direction; a missing sort key sorts last."""
    rid, key = position.resource_id, position.key
    if not sorted_:
        return f"q.id {op} %s", [rid]
    if forward:
        if key is None:
            return f"(q.k IS NULL AND q.id {op} %s)", [rid]
        return f"(q.k IS NULL OR q.k {op} %s OR (q.k = %s AND q.id {op} %s))", [key, key, rid]
    if key is None:
        return f"(q.k IS NOT NULL OR q.id {op} %s)", [rid]
    return f"(q.k IS NOT NULL AND (q.k {op} %s OR (q.k = %s AND q.id {op} %s)))", [key, key, rid]


async def _count(conn: psycopg.AsyncConnection, condition: Condition) -> int:
    cursor = await conn.execute(f"SELECT count(*) FROM resource r WHERE {condition.where()}", condition.args)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _estimate(conn: psycopg.AsyncConnection, condition: Condition) -> int:
    """The planner's row estimate: cheap on any size, and honest about being an estimate."""
    cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM resource r WHERE {condition.where()}",
                                condition.args)
    row = await cursor.fetchone()
    plan = row[0] if row else None
    return int(plan[0]["Plan"]["Plan Rows"]) if plan else 0


def _ignored_outcome(names: list[str], resource_type: str | None) -> dict[str, Any]:
    target = resource_type or "a search across all types"
    return operation_outcome([
        Issue("not-supported", f"Search parameter '{name}' is unknown or unsupported for {target} and was ignored",
              severity="warning", expression=(name,))
        for name in names
    ])
