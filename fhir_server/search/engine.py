"""The search interaction (a searchset Bundle as bytes) and the matching behind conditional operations.

Type, system (`_type`) and compartment searches share one path: filters → one page of matches in
keyset order → the resources `_include`/`_revinclude` bring along → the Bundle.
"""

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import psycopg

from fhir_server import json_numbers
from fhir_server.errors import FHIRError, Issue, operation_outcome
from fhir_server.resource_types import resource_types
from fhir_server.search import bundle, page, value_sets
from fhir_server.search.compartment import compartment_condition
from fhir_server.search.include import INCLUDE, MAX_ROUNDS, REVINCLUDE, Include, included, parse_include
from fhir_server.search.parameters import parameters_for
from fhir_server.search.query import (
    FORMAT_PARAMETERS, INDEX_TABLES, RESULT_PARAMETERS, Condition, ParsedQuery, invalid, parse_query, unsupported,
)
from fhir_server.search.subset import subset
from fhir_server.settings import get_settings

SUMMARY_VALUES = frozenset({"true", "text", "data", "count", "false"})
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
CONTAINED_VALUES = frozenset({"true", "false", "both"})
CONTAINED_TYPE_VALUES = frozenset({"container", "contained"})
# Parameters this module answers itself; the filter parameters go to `parse_query`.
_OWN_PARAMETERS = RESULT_PARAMETERS | {INCLUDE, REVINCLUDE, "_contained", "_containedType", "_type"}
# Index column a sort reads, ascending and descending (a date range sorts by its start, or its end).
_SORT_COLUMNS = {"string": ("value", "value"), "token": ("code", "code"), "date": ("low", "high"),
                 "number": ("value", "value"), "quantity": ("value", "value"), "uri": ("value", "value")}
_LAST_UPDATED = "_lastUpdated"
# Keys every candidate row has (a `_lastUpdated` key missing at the snapshot excludes the row).
_NEVER_MISSING = frozenset({"_id", _LAST_UPDATED})
_SNAPSHOT = object()
"""Stands for the search's snapshot time among the arguments of a sort key."""


@dataclass(frozen=True, slots=True)
class Sort:
    code: str
    descending: bool

    @property
    def name(self) -> str:
        return ("-" if self.descending else "") + self.code


@dataclass(slots=True)
class ResultOptions:
    count: int
    summary: str | None = None
    total: str | None = None
    elements: set[str] | None = None
    """Unqualified `_elements` names: they apply to the matches."""
    typed_elements: dict[str, set[str]] = field(default_factory=dict)
    """`_elements=Type.element` names: they apply to resources of that type, matches or included."""
    sorts: list[Sort] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    page_token: str | None = None
    link_parameters: list[tuple[str, str]] = field(default_factory=list)
    """Result parameters repeated in every link (all but `_page_token`)."""
    ignored: list[str] = field(default_factory=list)
    notes: list[Issue] = field(default_factory=list)
    """Information for the client about how the request was served (a capped `_count`, ...)."""
    contained: str = "false"
    contained_type: str = "container"

    @property
    def contained_entries(self) -> bool:
        """Whether the entries are the matching contained resources rather than their containers."""
        return self.contained != "false" and self.contained_type == "contained"


@dataclass(frozen=True, slots=True)
class Compartment:
    type: str
    id: str


@dataclass(frozen=True, slots=True)
class Restriction:
    """What the caller may see (from its token): matches and included resources alike are limited to
    `compartment` (when set) and to `readable_types` (None = every type)."""

    compartment: Compartment | None = None
    readable_types: frozenset[str] | None = None
    hidden_label: tuple[str, str] | None = None
    """A security label (system, code) whose resources the caller never sees (auth.enforce.HIDDEN_FROM_PATIENTS)."""
    filters: tuple[tuple[str, str], ...] = ()
    """Search parameters every resource the caller sees matches (v2 scope queries, the hidden label)."""


async def search(conn: psycopg.AsyncConnection, *, base_url: str, resource_type: str | None,
                 query: list[tuple[str, str]], strict: bool, compartment: Compartment | None = None,
                 restriction: Restriction | None = None) -> bytes:
    """Run a type-level, system-level (`resource_type=None`) or compartment search; the searchset Bundle as JSON.

    A compartment search with `resource_type=None` is `Compartment/id/*`.
    """
    base_url = base_url.rstrip("/")
    options = _result_options(resource_type, compartment, query, strict)
    parsed = filter_condition(resource_type, options.types, query, strict, base_url, restriction, options.contained)
    condition = parsed.condition
    if compartment is not None:
        sql, args = compartment_condition(compartment.type, compartment.id, resource_type)
        condition.add(sql, *args)
    for part in (condition, parsed.contained, parsed.own):
        if part is not None:
            await value_sets.resolve(conn, part.args)
    ignored = parsed.unknown + options.ignored
    if compartment is not None:
        search_url = f"{base_url}/{compartment.type}/{compartment.id}/{resource_type or '*'}"
    else:
        search_url = base_url + ("/" + resource_type if resource_type else "")
    link_parameters = parsed.accepted + options.link_parameters

    def link(extra: list[tuple[str, str]]) -> str:
        parameters = link_parameters + extra
        return search_url + ("?" + urlencode(parameters, safe=":|,/*") if parameters else "")

    self_link = link([(page.PAGE_TOKEN, options.page_token)] if options.page_token else [])
    issues = options.notes + (_ignored_issues(ignored, resource_type) if ignored else [])

    if options.summary == "count":
        total = await _count(conn, condition, parsed, options) if options.total != "estimate" \
            else await _estimate(conn, condition)
        return bundle.searchset([("self", self_link)], total, _outcome_entries(issues))

    digest = page.query_digest([search_url, options.types, parsed.accepted, [s.name for s in options.sorts]])
    position = page.decode(options.page_token, digest) if options.page_token else None
    snapshot = position.snapshot if position else datetime.now(timezone.utc)
    # With `_contained`, the rows are containers of any type.
    row_type = None if options.contained != "false" else _single_type(resource_type, options.types)
    rows, more = await _page_rows(conn, condition, options.sorts, row_type, snapshot, position, options.count)

    links = [("self", self_link)]
    paged = position is not None or more
    if paged:
        links.append(("first", link([])))
    forward = position is None or position.forward
    # Rows lie beyond this page in the direction it was fetched when `more`; the other way, when it
    # was reached through a token (an empty page reached so gets neither link).
    has_next = more if forward else True
    has_previous = position is not None if forward else more
    key_count = len(options.sorts)
    if rows and has_next:
        last = rows[-1]
        token = page.encode(page.Position(tuple(last[4:4 + key_count]), last[0], True, snapshot), digest)
        links.append(("next", link([(page.PAGE_TOKEN, token)])))
    if rows and has_previous:
        first = rows[0]
        token = page.encode(page.Position(tuple(first[4:4 + key_count]), first[0], False, snapshot), digest)
        links.append(("previous", link([(page.PAGE_TOKEN, token)])))

    if options.contained_entries:
        entries = await _contained_entries(conn, base_url, rows, parsed, options)
    else:
        entries = [_entry(f"{base_url}/{row_type}/{fhir_id}", row_type, content, "match", options)
                   for _, row_type, fhir_id, content, *_ in rows]
    total = None
    if options.total == "accurate":
        total = await _count(conn, condition, parsed, options)
    elif options.total == "estimate":
        total = await _estimate(conn, condition)
    elif options.total is None and not paged and options.count > 0:
        total = len(entries)  # the whole result is on this page: the total is known for free
    if options.includes and rows:
        found = await included(conn, [(row[0], row[1], row[2]) for row in rows], options.includes)
        if restriction is not None:
            found.rows = await _visible(conn, found.rows, restriction)
        entries += [_entry(f"{base_url}/{row_type}/{fhir_id}", row_type, content, "include", options)
                    for _, row_type, fhir_id, content in found.rows]
        if found.capped:
            issues.append(Issue("incomplete", f"More than {found.limit} resources were to be included with this "
                                              f"page; only the first {found.limit} are. Ask for smaller pages "
                                              "(_count) to get them all", severity="warning",
                                expression=(INCLUDE, REVINCLUDE)))
        if found.unfinished:
            issues.append(Issue("incomplete", f":iterate stopped after {MAX_ROUNDS} rounds; further resources "
                                              "may be referenced", severity="warning"))
    return bundle.searchset(links, total, _outcome_entries(issues) + entries)


async def _visible(conn: psycopg.AsyncConnection, rows: list[tuple[int, str, str, bytes]],
                   restriction: Restriction) -> list[tuple[int, str, str, bytes]]:
    """The included rows the caller may see: of a readable type, and inside its compartment if it has one."""
    if restriction.readable_types is not None:
        rows = [row for row in rows if row[1] in restriction.readable_types]
    if restriction.hidden_label is not None and rows:
        found = await conn.execute("SELECT resource_id FROM search_token WHERE resource_id = ANY(%s) "
                                   "AND param = '_security' AND system = %s AND code = %s",
                                   [[row[0] for row in rows], *restriction.hidden_label])
        hidden = {row[0] for row in await found.fetchall()}
        rows = [row for row in rows if row[0] not in hidden]
    if restriction.compartment is None or not rows:
        return rows
    sql, args = compartment_condition(restriction.compartment.type, restriction.compartment.id, None,
                                      with_itself=True)
    found = await conn.execute(f"SELECT r.id FROM resource r WHERE r.id = ANY(%s) AND {sql}",
                               [[row[0] for row in rows], *args])
    visible = {row[0] for row in await found.fetchall()}
    return [row for row in rows if row[0] in visible]


def _entry(full_url: str, resource_type: str, content: bytes, mode: str, options: ResultOptions) -> bytes:
    elements = options.typed_elements.get(resource_type)
    if mode == "match" and options.elements is not None:
        elements = options.elements | (elements or set())
    if elements is not None or options.summary in ("true", "text", "data"):
        content = subset(content, options.summary, elements)
    return bundle.entry(full_url, content, mode)


async def _contained_entries(conn: psycopg.AsyncConnection, base_url: str, rows: list[tuple], parsed: ParsedQuery,
                             options: ResultOptions) -> list[bytes]:
    """`_containedType=contained`: the page's matching contained resources (fullUrl `[base]/Type/id#cid`),
    and with `_contained=both` its own matches, in page order."""
    assert parsed.contained is not None
    ids = [row[0] for row in rows]
    cursor = await conn.execute(f"SELECT k.resource_id, k.contained_id FROM search_token k "
                                f"WHERE k.resource_id = ANY(%s) AND {parsed.contained.where()}",
                                [ids, *parsed.contained.args])
    matched = {(row[0], row[1]) for row in await cursor.fetchall()}
    own: set[int] = set()
    if parsed.own is not None:
        cursor = await conn.execute(f"SELECT r.id FROM resource r WHERE r.id = ANY(%s) AND {parsed.own.where()}",
                                    [ids, *parsed.own.args])
        own = {row[0] for row in await cursor.fetchall()}
    entries = []
    for pk, row_type, fhir_id, content, *_ in rows:
        full_url = f"{base_url}/{row_type}/{fhir_id}"
        if pk in own:
            entries.append(_entry(full_url, row_type, content, "match", options))
        for contained in json_numbers.loads(content).get("contained") or []:
            if isinstance(contained, dict) and (pk, contained.get("id")) in matched:
                entries.append(_entry(f"{full_url}#{contained['id']}", contained["resourceType"],
                                      json_numbers.dumps(contained), "match", options))
    return entries


def _outcome_entries(issues: list[Issue]) -> list[bytes]:
    return [bundle.outcome_entry(operation_outcome(issues))] if issues else []


async def find_matches(conn: psycopg.AsyncConnection, resource_type: str, query: list[tuple[str, str]],
                       limit: int = 2, *, base_url: str | None = None) -> list[tuple[int, str, int]]:
    """Up to `limit` current resources matching a conditional URL's query, as (resource.id, fhir_id, version_id).

    Always strict: an unknown parameter is a 400. Result parameters (`_count`, `_sort`, ...) are ignored;
    an empty query matches every resource of the type.
    """
    condition = parse_query(resource_type, _filters(query), strict=True, base_url=base_url).condition
    await value_sets.resolve(conn, condition.args)
    cursor = await conn.execute(
        f"SELECT r.id, r.fhir_id, r.version_id FROM resource r WHERE {condition.where()} ORDER BY r.id LIMIT %s",
        [*condition.args, limit])
    return [(row[0], row[1], row[2]) for row in await cursor.fetchall()]


def _filters(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in query if name.partition(":")[0] not in _OWN_PARAMETERS]


def filter_condition(resource_type: str | None, types: list[str], query: list[tuple[str, str]], strict: bool,
                     base_url: str, restriction: Restriction | None, contained: str = "false") -> ParsedQuery:
    """The condition over `r` of the filter parameters and of what the caller may see (search and
    $semantic-search alike): restricted in SQL, so paging and totals count only what the caller may see.

    With `contained` (`_contained=true|both`) the matches are containers, their contained resources matching.
    """
    parsed = _parse_filters(resource_type, types, query, strict, base_url)
    if contained != "false":
        assert resource_type is not None
        parsed = _with_contained(resource_type, parsed, query, strict, base_url, contained)
    if restriction is not None and restriction.compartment is not None:
        sql, args = compartment_condition(restriction.compartment.type, restriction.compartment.id, resource_type,
                                          with_itself=True)
        parsed.condition.add(sql, *args)
    return parsed


def _with_contained(resource_type: str, own: ParsedQuery, query: list[tuple[str, str]], strict: bool,
                    base_url: str, contained: str) -> ParsedQuery:
    """The containers of matching contained resources (`true`), or those and the type's own matches (`both`).

    The default search never comes here: its SQL stays as it is."""
    inner = parse_query(resource_type, _filters(query), strict=strict, base_url=base_url, contained=True)
    containers = f"NOT r.deleted AND r.id IN (SELECT k.resource_id FROM search_token k WHERE {inner.condition.where()})"
    condition = Condition()
    if contained == "true":
        condition.add(containers, *inner.condition.args)
        return ParsedQuery(condition, inner.accepted, inner.unknown, contained=inner.condition)
    condition.add(f"(({own.condition.where()}) OR ({containers}))", *own.condition.args, *inner.condition.args)
    unknown = own.unknown + [name for name in inner.unknown if name not in own.unknown]
    return ParsedQuery(condition, own.accepted, unknown, contained=inner.condition, own=own.condition)


def _parse_filters(resource_type: str | None, types: list[str], query: list[tuple[str, str]], strict: bool,
                   base_url: str) -> ParsedQuery:
    """The condition of the filter parameters; for `_type=A,B`, a resource matches by its own type's parameters.

    Across several types a parameter must be defined for each of them (else it is unknown), so that it
    never filters one type and leaves another unfiltered.
    """
    filters = _filters(query)
    if resource_type is not None or not types:
        return parse_query(resource_type, filters, strict=strict, base_url=base_url)
    if len(types) == 1:
        return parse_query(types[0], filters, strict=strict, base_url=base_url)
    unknown = sorted({name for each in types
                      for name in parse_query(each, filters, strict=strict, base_url=base_url).unknown})
    kept = [(name, value) for name, value in filters if name not in unknown]
    per_type = [parse_query(each, kept, strict=True, base_url=base_url) for each in types]
    condition = Condition()
    condition.add("(" + " OR ".join(f"({each.condition.where()})" for each in per_type) + ")",
                  *[arg for each in per_type for arg in each.condition.args])
    return ParsedQuery(condition, per_type[0].accepted, unknown)


def _result_options(resource_type: str | None, compartment: Compartment | None, query: list[tuple[str, str]],
                    strict: bool) -> ResultOptions:
    settings = get_settings()
    options = ResultOptions(settings.default_page_size)
    for name, value in query:
        base, _, modifier = name.partition(":")
        if base not in _OWN_PARAMETERS:
            continue
        if name == page.PAGE_TOKEN:
            options.page_token = value
            continue
        keep = True
        if base in (INCLUDE, REVINCLUDE):
            options.includes.append(parse_include(name, value))
        elif modifier:
            raise invalid(name, f"{base} takes no modifier")
        elif name == "_count":
            if not value.isdigit():
                raise invalid(name, "_count must be a non-negative integer")
            options.count = min(int(value), settings.max_page_size)
            if int(value) > settings.max_page_size:
                options.notes.append(Issue(
                    "informational", f"_count={value} exceeds this server's maximum page size; pages hold at "
                                     f"most {settings.max_page_size} resources", severity="information",
                    expression=("_count",)))
        elif name == "_sort":
            keep = _parse_sort(options, resource_type, value, strict)
        elif name == "_summary":
            if value not in SUMMARY_VALUES:
                raise invalid(name, f"_summary must be one of {', '.join(sorted(SUMMARY_VALUES))}")
            options.summary = None if value == "false" else value
        elif name == "_total":
            if value not in TOTAL_VALUES:
                raise invalid(name, f"_total must be one of {', '.join(sorted(TOTAL_VALUES))}")
            options.total = value
        elif name == "_elements":
            _parse_elements(options, value)
        elif name == "_type":
            if resource_type is not None or compartment is not None:
                raise invalid(name, "_type applies to a search across all types only")
            options.types = parse_types(value)
        elif name in ("_contained", "_containedType"):
            _parse_contained(options, name, value, resource_type)
        if keep:
            options.link_parameters.append((name, value))
    if options.contained != "false" and options.sorts:
        # Containers of any type match: the searched type's sort parameters do not apply to them.
        if strict:
            raise unsupported("_sort", resource_type, "_sort is not supported with _contained")
        options.ignored.append("_sort=" + ",".join(sort.name for sort in options.sorts))
        options.link_parameters = [(name, value) for name, value in options.link_parameters if name != "_sort"]
        options.sorts = []
    if options.elements is not None and options.summary is not None:
        raise invalid("_elements", "_elements and _summary cannot be combined")
    return options


def _parse_elements(options: ResultOptions, value: str) -> None:
    """`name` applies to the matches, `Type.name` to resources of Type (matches and included ones)."""
    for element in (element.strip() for element in value.split(",")):
        if not element:
            continue
        qualifier, _, name = element.rpartition(".")
        if qualifier and qualifier != "*":
            options.typed_elements.setdefault(qualifier, set()).add(name)
        else:
            options.elements = (options.elements or set()) | {name}


def parse_types(value: str) -> list[str]:
    types = [each.strip() for each in value.split(",") if each.strip()]
    unknown = [each for each in types if each not in resource_types()]
    if unknown or not types:
        raise invalid("_type", f"not resource types: {', '.join(unknown) or value!r}")
    return list(dict.fromkeys(types))


def _parse_contained(options: ResultOptions, name: str, value: str, resource_type: str | None) -> None:
    """`_contained` and `_containedType`; contained resources are searched within one type."""
    allowed = CONTAINED_VALUES if name == "_contained" else CONTAINED_TYPE_VALUES
    if value not in allowed:
        raise invalid(name, f"{name} must be one of {', '.join(sorted(allowed))}")
    if name == "_containedType":
        options.contained_type = value
        return
    if value != "false" and resource_type is None:
        raise invalid(name, f"{name}={value} needs a resource type to search")
    options.contained = value


def _single_type(resource_type: str | None, types: list[str]) -> str | None:
    """The one resource type searched, if there is one (`_type=X` names one too)."""
    return resource_type or (types[0] if len(types) == 1 else None)


def _parse_sort(options: ResultOptions, resource_type: str | None, value: str, strict: bool) -> bool:
    """Set `options.sorts` from `_sort`; False when the parameter is ignored (lenient mode)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise invalid("_sort", "no sort key")
    known = parameters_for(_single_type(resource_type, options.types))
    sorts: list[Sort] = []
    problems = []
    for name in names:
        code = name[1:] if name.startswith("-") else name
        parameter = known.get(code)
        if parameter is None or (parameter.type not in _SORT_COLUMNS and code not in ("_id", _LAST_UPDATED)):
            problems.append(f"cannot sort by '{code}'")
        elif code in (sort.code for sort in sorts):
            problems.append(f"'{code}' is named twice")
        else:
            sorts.append(Sort(code, name.startswith("-")))
    if problems:
        if strict:
            raise unsupported("_sort", resource_type, f"_sort={value}: " + "; ".join(problems))
        options.ignored.append(f"_sort={value}")
        return False
    options.sorts = sorts
    return True


def _sort_key(sort: Sort, resource_type: str | None, updated_since_snapshot: bool) -> tuple[str, list[Any]]:
    """SQL of the sort key of resource `r`, and its arguments (`_SNAPSHOT` stands for the snapshot)."""
    if sort.code == "_id":
        return "r.fhir_id", []
    if sort.code == _LAST_UPDATED:
        if not updated_since_snapshot:
            return "r.last_updated", []
        return ("(SELECT max(v.last_updated) FROM resource_version v "
                "WHERE v.resource_id = r.id AND v.last_updated <= %s)"), [_SNAPSHOT]
    parameter = parameters_for(resource_type)[sort.code]
    column = _SORT_COLUMNS[parameter.type][1 if sort.descending else 0]
    aggregate = "max" if sort.descending else "min"
    type_filter = "s.resource_type = r.resource_type AND " if resource_type else "s.contained_id IS NULL AND "
    return (f"(SELECT {aggregate}(s.{column}) FROM {INDEX_TABLES[parameter.type]} s "
            f"WHERE s.resource_id = r.id AND {type_filter}s.param = %s)"), [parameter.code]


def _candidates(condition: Condition, sorts: list[Sort], resource_type: str | None, snapshot: datetime
                ) -> list[tuple[str, list[Any]]]:
    """SQL of the matching rows with their sort keys k0, k1, ..., and its arguments; in one or two branches.

    `_lastUpdated` is read as of `snapshot` (when the search's first page was read): a resource updated
    since keeps the position of its version current then, and one created since has no key and is left
    out. Without this, paging by `_lastUpdated` would show an updated resource twice or never, as its
    key would jump past the cursor. The rows not updated since (nearly all) form their own branch, whose
    key is the plain column, so that the (resource_type, last_updated, id) index can serve the page.
    Other keys are read as they are now (R4 asks for no snapshot).
    """
    def branch(updated_since_snapshot: bool) -> tuple[str, list[Any]]:
        keys = [_sort_key(sort, resource_type, updated_since_snapshot) for sort in sorts]
        columns = "".join(f", {sql} AS k{index}" for index, (sql, _) in enumerate(keys))
        args = [snapshot if arg is _SNAPSHOT else arg for _, key_args in keys for arg in key_args]
        return (f"SELECT r.id, r.resource_type, r.fhir_id{columns} FROM resource r "
                f"WHERE {condition.where()}"), [*args, *condition.args]

    if not sorts and resource_type is not None:
        from_index_rows = _from_index_rows(condition, resource_type)
        if from_index_rows is not None:
            return [from_index_rows]
    if not any(sort.code == _LAST_UPDATED for sort in sorts):
        return [branch(False)]
    (current, current_args), (updated, updated_args) = branch(False), branch(True)
    return [(f"{current} AND r.last_updated <= %s", [*current_args, snapshot]),
            (f"{updated} AND r.last_updated > %s", [*updated_args, snapshot])]


_ID_IN = "r.id IN ("
_OUTER_COLUMN = re.compile(r"\br\.")
_OF_THE_TYPE = ("r.resource_type = %s", "NOT r.deleted")
"""Conditions `filter_condition` puts on every typed search, true of any resource with index rows."""


def _id_in_subquery(sql: str) -> bool:
    """Whether `sql` is one `r.id IN (subquery)` whose subquery does not look at `r`."""
    if not sql.startswith(_ID_IN) or not sql.endswith(")") or _OUTER_COLUMN.search(sql, len(_ID_IN)):
        return False
    depth = 0
    for char in re.sub(r"'[^']*'", "", sql)[len(_ID_IN) - 1:-1]:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return False  # the parenthesis after IN closes before the end: more than one term
    return True


def _from_index_rows(condition: Condition, resource_type: str) -> tuple[str, list[Any]] | None:
    """`_candidates` in id order when every condition is `r.id IN (index rows)`: the ids come from the first
    condition's rows alone, without visiting `resource` for each match (index rows exist only for current
    resources of their type), so the page is cut before any resource row is read. A common surname in a
    chain matches a thousand Communications; only the page's twenty are then read, by `_with_contents`.
    None when some condition is of another kind.

    Every `r.id IN` condition (query.py, compartment.py) must therefore yield current resources only: one
    that takes ids from `resource` itself says `NOT deleted`, or a deleted one would take a place on the
    page and the rows after it would lose their `next` link."""
    terms, args = [], list(condition.args)
    for sql in condition.sql:
        count = len(sql.replace("%%", "").split("%s")) - 1
        term_args, args = args[:count], args[count:]
        if sql in _OF_THE_TYPE:
            continue
        if not _id_in_subquery(sql):
            return None
        terms.append((sql, term_args))
    if not terms:
        return None
    (first, first_args), *others = terms
    # resource_type and fhir_id are filled in from `resource` by `_with_contents`, for the page's rows only.
    candidates = (f"SELECT r.id, %s::text AS resource_type, NULL::text AS fhir_id FROM (SELECT DISTINCT d.id "
                  f"FROM ({first[len(_ID_IN):-1]}) d(id)) r")
    if others:
        candidates += " WHERE " + " AND ".join(sql for sql, _ in others)
    return candidates, [resource_type, *first_args, *(arg for _, term_args in others for arg in term_args)]


async def _page_rows(conn: psycopg.AsyncConnection, condition: Condition, sorts: list[Sort],
                     resource_type: str | None, snapshot: datetime, position: page.Position | None, count: int
                     ) -> tuple[list[tuple], bool]:
    """One page in (sort keys..., resource.id) order after/before `position`, and whether more rows lie beyond.

    Rows are (id, resource_type, fhir_id, content, key...). A missing key sorts last, whatever the direction.
    """
    if count == 0:
        return [], False
    if position is not None and len(position.keys) != len(sorts):
        raise FHIRError.of(400, "invalid", "The page token does not fit this search", page.PAGE_TOKEN)
    if sorts and sorts[0].code not in _NEVER_MISSING and resource_type is not None:
        return await _page_rows_in_key_order(conn, condition, sorts, resource_type, snapshot, position, count)
    forward = position is None or position.forward
    # Ties break on resource.id, in the direction of the last key (ascending without keys).
    id_ascending = (not sorts or not sorts[-1].descending) == forward
    order = [*_key_order(sorts, 0, forward), f"q.id {'ASC' if id_ascending else 'DESC'}"]
    filters, filter_args = ["true"], []
    if position is not None:
        keyset, filter_args = _keyset(sorts, position, forward, id_ascending)
        filters = [keyset]
    filters += _snapshot_filters(sorts)
    key_names = "".join(f", q.k{index}" for index in range(len(sorts)))
    ordered = f"ORDER BY {', '.join(order)} LIMIT %s"
    pages, args = [], []
    for candidates, candidate_args in _candidates(condition, sorts, resource_type, snapshot):
        pages.append(f"SELECT q.id, q.resource_type, q.fhir_id{key_names} FROM ({candidates}) q "
                     f"WHERE {' AND '.join(filters)} {ordered}")
        args += [*candidate_args, *filter_args, count + 1]
    # Each branch pages on its own (an index can give its order), then the branches merge.
    sql = pages[0] if len(pages) == 1 else \
        f"SELECT * FROM ({' UNION ALL '.join(f'({each})' for each in pages)}) q {ordered}"
    rows = await _with_contents(conn, sql, args if len(pages) == 1 else [*args, count + 1])
    more = len(rows) > count
    rows = rows[:count]
    if not forward:
        rows.reverse()
    return rows, more


def _key_order(sorts: list[Sort], start: int, forward: bool) -> list[str]:
    """ORDER BY items, in fetch order, of the keys from `start` on: a missing key sorts last in page order."""
    order = []
    for index, sort in enumerate(sorts[start:], start):
        ascending = (not sort.descending) == forward
        if sort.code not in _NEVER_MISSING:  # left out for those, so that an index can give the order
            order.append(f"(q.k{index} IS NULL) {'ASC' if forward else 'DESC'}")
        order.append(f"q.k{index} {'ASC' if ascending else 'DESC'}")
    return order


def _snapshot_filters(sorts: list[Sort]) -> list[str]:
    """A resource created after the snapshot has no `_lastUpdated` key: it is not part of this search."""
    return [f"q.k{index} IS NOT NULL" for index, sort in enumerate(sorts) if sort.code == _LAST_UPDATED]


async def _with_contents(conn: psycopg.AsyncConnection, sql: str, args: list[Any]) -> list[tuple]:
    """Run `sql`, a page of (id, resource_type, fhir_id, key...) rows in page order, and return them as
    (id, resource_type, fhir_id, content, key...), in the same statement (one round trip).

    A page is found without reading the resources' contents: covering indexes on `resource` (migration
    0011) answer its conditions, so only the page's own rows are read, by the outer join, not every
    candidate's."""
    cursor = await conn.execute(
        f"SELECT p.*, r.resource_type, r.fhir_id, r.content FROM (SELECT row_number() OVER () AS n, s.* "
        f"FROM ({sql}) s) p JOIN resource r ON r.id = p.id WHERE r.content IS NOT NULL ORDER BY p.n", args)
    return [(row[1], row[-3], row[-2], row[-1], *row[4:-3]) for row in await cursor.fetchall()]


async def _page_rows_in_key_order(conn: psycopg.AsyncConnection, condition: Condition, sorts: list[Sort],
                                  resource_type: str, snapshot: datetime, position: page.Position | None,
                                  count: int) -> tuple[list[tuple], bool]:
    """`_page_rows` when the first sort key is an index-table parameter: the page walks that table's rows of
    the parameter in key order (an index on (resource_type, param, key, ...) stops the walk after one page,
    however many resources match) instead of looking up the keys of every match and sorting them all.

    A resource's first key is its lowest value (highest when descending), as `_sort_key` defines it: the
    walk keeps that row of each resource, the first of them in the table when several hold the value.
    Rows with an equal first key are ordered by the following keys, looked up for that run of rows only
    (an incremental sort). Resources without the first key follow, read only when the keyed ones run out.
    """
    first = sorts[0]
    parameter = parameters_for(resource_type)[first.code]
    table = INDEX_TABLES[parameter.type]
    column = _SORT_COLUMNS[parameter.type][1 if first.descending else 0]
    forward = position is None or position.forward
    ascending = (not first.descending) == forward
    id_ascending = (not sorts[-1].descending) == forward
    lower = "<" if not first.descending else ">"
    following = [_following_key(sort, resource_type) for sort in sorts[1:]]
    columns = "".join(f", {sql} AS k{index}" for index, (sql, _) in enumerate(following, 1))
    following_args = [snapshot if arg is _SNAPSHOT else arg for _, args in following for arg in args]
    keyed = (f"SELECT r.id, r.resource_type, r.fhir_id, s.{column} AS k0{columns} FROM {table} s "
             f"JOIN resource r ON r.id = s.resource_id WHERE s.resource_type = %s AND s.param = %s "
             f"AND s.{column} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table} o WHERE o.resource_id = s.resource_id "
             f"AND o.resource_type = s.resource_type AND o.param = s.param "
             f"AND (o.{column} {lower} s.{column} OR (o.{column} = s.{column} AND o.ctid < s.ctid))) "
             f"AND {condition.where()}")
    missing = (f"SELECT r.id, r.resource_type, r.fhir_id, NULL AS k0{columns} FROM resource r "
               f"WHERE {condition.where()} AND NOT EXISTS (SELECT 1 FROM {table} o "
               f"WHERE o.resource_id = r.id AND o.resource_type = %s AND o.param = %s AND o.{column} IS NOT NULL)")
    following_order = [*_key_order(sorts, 1, forward), f"q.id {'ASC' if id_ascending else 'DESC'}"]
    # (name, SQL, arguments, ORDER BY)
    branches = [
        ("keyed", keyed, [*following_args, resource_type, parameter.code, *condition.args],
         [f"q.k0 {'ASC' if ascending else 'DESC'}", *following_order]),
        ("missing", missing, [*following_args, *condition.args, resource_type, parameter.code], following_order),
    ]
    if not forward:  # missing keys sort last, so they come first when fetching backwards
        branches.reverse()
    at = None if position is None else ("keyed" if position.keys[0] is not None else "missing")
    key_names = "".join(f", q.k{index}" for index in range(len(sorts)))
    rows: list[tuple] = []
    for name, sql, args, order in branches:
        if at is not None and name != at:
            continue  # a branch before the position's own, in fetch order
        filters, filter_args = _snapshot_filters(sorts) or ["true"], []
        if at == name:
            assert position is not None
            keyset, filter_args = _keyset(sorts, position, forward, id_ascending)
            filters.append(keyset)
            if name == "keyed":  # the bound the index walk starts from
                filters.append(f"q.k0 {'>=' if ascending else '<='} %s")
                filter_args.append(position.keys[0])
            at = None
        rows += await _with_contents(
            conn, f"SELECT q.id, q.resource_type, q.fhir_id{key_names} FROM ({sql}) q "
                  f"WHERE {' AND '.join(filters)} ORDER BY {', '.join(order)} LIMIT %s",
            [*args, *filter_args, count + 1 - len(rows)])
        if len(rows) > count:
            break
    more = len(rows) > count
    rows = rows[:count]
    if not forward:
        rows.reverse()
    return rows, more


def _following_key(sort: Sort, resource_type: str) -> tuple[str, list[Any]]:
    """`_sort_key` of a key after the first, in one expression: `_lastUpdated` as of the snapshot."""
    if sort.code != _LAST_UPDATED:
        return _sort_key(sort, resource_type, False)
    since, args = _sort_key(sort, resource_type, True)
    return f"(CASE WHEN r.last_updated <= %s THEN r.last_updated ELSE {since} END)", [_SNAPSHOT, *args]


def _keyset(sorts: list[Sort], position: page.Position, forward: bool, id_ascending: bool
            ) -> tuple[str, list[Any]]:
    """Rows strictly beyond `position` in the fetch order: the lexicographic comparison of
    (key₀, key₁, ..., id), built from the last key outwards; a missing key sorts last in page order."""
    id_op = ">" if id_ascending else "<"
    if all(sort.code in _NEVER_MISSING and sort.descending == sorts[-1].descending for sort in sorts):
        # One row comparison: an index on (type, last_updated, id) can seek to it.
        columns = ", ".join([*(f"q.k{index}" for index in range(len(sorts))), "q.id"])
        return f"({columns}) {id_op} ({', '.join(['%s'] * (len(sorts) + 1))})", [*position.keys, position.resource_id]
    sql, args = f"q.id {id_op} %s", [position.resource_id]
    for index in reversed(range(len(sorts))):
        column, key = f"q.k{index}", position.keys[index]
        op = ">" if (not sorts[index].descending) == forward else "<"
        if forward:  # nulls come last: nothing lies beyond a null but other nulls
            if key is None:
                sql = f"({column} IS NULL AND {sql})"
            else:
                missing = "" if sorts[index].code in _NEVER_MISSING else f"{column} IS NULL OR "
                sql, args = f"({missing}{column} {op} %s OR ({column} = %s AND {sql}))", [key, key, *args]
        else:  # fetching backwards, nulls come first
            if key is None:
                sql = f"({column} IS NOT NULL OR {sql})"
            else:
                sql, args = f"({column} {op} %s OR ({column} = %s AND {sql}))", [key, key, *args]
    return sql, args


async def _count(conn: psycopg.AsyncConnection, condition: Condition, parsed: ParsedQuery,
                 options: ResultOptions) -> int:
    """The number of matches: resources, or with `_containedType=contained` the contained ones (and with
    `_contained=both` the type's own) within the matching containers."""
    if not options.contained_entries:
        cursor = await conn.execute(f"SELECT count(*) FROM resource r WHERE {condition.where()}", condition.args)
    else:
        assert parsed.contained is not None
        containers = f"SELECT r.id FROM resource r WHERE {condition.where()}"
        sql = (f"SELECT (SELECT count(*) FROM search_token k WHERE {parsed.contained.where()} "
               f"AND k.resource_id IN ({containers}))")
        args = [*parsed.contained.args, *condition.args]
        if parsed.own is not None:
            sql += f" + (SELECT count(*) FROM resource r WHERE {condition.where()} AND {parsed.own.where()})"
            args += [*condition.args, *parsed.own.args]
        cursor = await conn.execute(sql, args)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _estimate(conn: psycopg.AsyncConnection, condition: Condition) -> int:
    """The planner's row estimate: cheap on any size, and honest about being an estimate."""
    cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM resource r WHERE {condition.where()}",
                                condition.args)
    row = await cursor.fetchone()
    plan = row[0] if row else None
    return int(plan[0]["Plan"]["Plan Rows"]) if plan else 0


def _ignored_issues(names: list[str], resource_type: str | None) -> list[Issue]:
    target = resource_type or "a search across all types"
    return [Issue("not-supported", f"Search parameter '{name}' is unknown or unsupported for {target} and was ignored",
                  severity="warning", expression=(name,))
            for name in names]
