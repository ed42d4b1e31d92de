"""Search parameters of a request → a parameterised SQL condition over `resource r` and the index tables."""

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from fhir_server.errors import FHIRError
from fhir_server.search import value_sets
from fhir_server.search.canonical import canonical_types, named_by, texts
from fhir_server.search.extract import NOT_FULL_TEXT_INDEXED, contained_type
from fhir_server.search.parameters import SearchParameter, one_date_row, parameters_for, search_parameters
from fhir_server.search.values import (
    FAR_FUTURE, UCUM, date_range, decimal_of, normalize_string, number_range, reference_target, ucum_canonical,
)

# Result parameters: they shape the Bundle rather than select resources.
RESULT_PARAMETERS = frozenset({"_count", "_sort", "_summary", "_total", "_elements", "_page_token"})
FORMAT_PARAMETERS = frozenset({"_format", "_pretty"})

INDEX_TABLES = {"string": "search_string", "token": "search_token", "date": "search_date",
                "number": "search_number", "quantity": "search_quantity", "uri": "search_uri",
                "reference": "search_reference"}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)", re.DOTALL)
_MODIFIERS = {
    "string": {"exact", "contains"},
    "token": {"not", "text", "in", "not-in", "below", "above", "of-type"},
    "reference": {"identifier"},
    "uri": {"below", "above"},
    "date": set(), "number": set(), "quantity": set(), "composite": set(),
}
_NEGATED_MODIFIERS = frozenset({"not", "not-in"})
# Rows other than the parameter's own: `:identifier` reads Reference.identifier and `:of-type` the
# identifier's type, both indexed as tokens under `<code>:<modifier>`.
_MODIFIER_ROWS = {"identifier": "search_token", "of-type": "search_token"}
# Searched by their own SQL rather than through the parameter registry.
_SPECIAL_PARAMETERS = frozenset({"_list", "_text", "_content"})
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
# A date row's range as the GiST index search_date_span holds it (migration 0011): the same expression.
_DATE_SPAN = "tstzrange(least(s.low, s.high), greatest(s.low, s.high), '[]')"


@dataclass(slots=True)
class Condition:
    """SQL text over `r` with `%s` placeholders, and their values in order."""

    sql: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, sql: str, *args: Any) -> None:
        self.sql.append(sql)
        self.args.extend(args)

    def where(self) -> str:
        return " AND ".join(self.sql) if self.sql else "true"


@dataclass(slots=True)
class ParsedQuery:
    condition: Condition
    accepted: list[tuple[str, str]]
    """The filter parameters used, in request order (for the self link and the page token)."""
    unknown: list[str]
    """Names of parameters ignored in lenient mode."""
    contained: Condition | None = None
    """With `_contained=true|both`: the condition on the contained resources (over `search_token k`)."""
    own: Condition | None = None
    """With `_contained=both`: the condition on the resources of the type themselves (over `r`)."""


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on `separator` except where escaped with a backslash; unescape `\\,` `\\|` `\\$` `\\\\`."""
    parts, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == separator:
                current.append(nxt)
            else:
                current.append(ch + nxt)
            i += 2
            continue
        if ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def _or_values(value: str) -> list[str]:
    return split_escaped(value, ",")


def invalid(name: str, message: str) -> FHIRError:
    return FHIRError.of(400, "invalid", f"Invalid search parameter '{name}': {message}", name)


def unsupported(name: str, resource_type: str | None, message: str | None = None) -> FHIRError:
    target = resource_type or "a search across all types"
    return FHIRError.of(400, "not-supported",
                        message or f"Unknown or unsupported search parameter '{name}' for {target}", name)


class _Unknown(Exception):
    """A parameter (or a part of a chain) this server does not know or support."""


def parse_query(resource_type: str | None, query: list[tuple[str, str]], *, strict: bool,
                base_url: str | None = None, contained: bool = False) -> ParsedQuery:
    """The SQL condition for the filter parameters of `query`; result and format parameters are skipped.

    Unknown parameters raise a 400 when `strict`, else they are listed in `unknown`; malformed values
    always raise a 400. The condition is over `resource r`; with `contained` (a type is needed) it is over
    the contained resources of `resource_type` instead: their `_id` rows `search_token k`, whose
    resource_id is the container's (see extract.storage_rows).
    """
    builder = _Builder(base_url.rstrip("/") if base_url else None, contained)
    condition = Condition()
    r = "k" if contained else "r"
    if contained:
        assert resource_type is not None
        condition.add("k.resource_type = %s AND k.param = '_id'", contained_type(resource_type))
    else:
        if resource_type is not None:
            condition.add("r.resource_type = %s", resource_type)
        condition.add("NOT r.deleted")
    accepted: list[tuple[str, str]] = []
    unknown: list[str] = []
    same_row = _same_row_dates(resource_type, query)
    for name, value in query:
        if name in RESULT_PARAMETERS or name in FORMAT_PARAMETERS:
            continue
        if name in same_row:
            if same_row[name]:  # its first occurrence brings the condition of all of them
                parameter = parameters_for(resource_type)[name]
                clause = builder.dates(resource_type, r, parameter, name, same_row[name])
                same_row[name] = []
                condition.add(clause.where(), *clause.args)
            accepted.append((name, value))
            continue
        try:
            clause = builder.clause(resource_type, r, name, value)
        except _Unknown as error:
            if strict:
                raise unsupported(name, resource_type, str(error) or None) from None
            unknown.append(name)
            continue
        condition.add(clause.where(), *clause.args)
        accepted.append((name, value))
    return ParsedQuery(condition, accepted, unknown)


def _same_row_dates(resource_type: str | None, query: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Date parameters given more than once (`birthdate=ge1975-04&birthdate=lt1975-05`) that have one index
    row per resource, with their values: those values must all hold for that one row, so one lookup of the
    row can bound both ends of its range (each value alone would match half the table)."""
    if resource_type is None:
        return {}
    values: dict[str, list[str]] = {}
    for name, value in query:
        values.setdefault(name, []).append(value)
    known = parameters_for(resource_type)
    return {name: given for name, given in values.items()
            if len(given) > 1 and name in known and known[name].type == "date"
            and one_date_row(resource_type, known[name].expression)}


def _modifier_supported(parameter: SearchParameter, modifier: str) -> bool:
    if not modifier or modifier == "missing":
        return True
    if parameter.code in ("_id", "_lastUpdated"):
        return False
    if parameter.type == "reference" and _RESOURCE_TYPE.fullmatch(modifier):
        return not parameter.targets or modifier in parameter.targets
    return modifier in _MODIFIERS.get(parameter.type, set())


def _known_type(resource_type: str) -> bool:
    return resource_type in search_parameters().by_type


@dataclass(slots=True)
class _Builder:
    """Builds the condition of one parameter over a resource alias; chains and `_has` nest it."""

    base_url: str | None
    contained: bool = False
    """Conditions on contained resources (parse_query): `r` is then their `_id` row."""
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def alias(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def index_subquery(self, table: str, param: str, resource_type: str | None, r: str, *, correlated: bool,
                       extra: str | None = None) -> Condition:
        if self.contained:
            assert resource_type is not None
            return _index_subquery(table, param, contained_type(resource_type), r, correlated=correlated,
                                   extra=extra, contained=True)
        return _index_subquery(table, param, resource_type, r, correlated=correlated, extra=extra)

    def clause(self, resource_type: str | None, r: str, name: str, value: str) -> Condition:
        """The condition `name=value` puts on resource `r` (of `resource_type`, None for any type)."""
        if name.startswith("_has:"):
            if self.contained:
                raise _Unknown(f"'{name}' is not supported with _contained")
            return self.has(resource_type, r, name, value)
        head, _, chained = name.partition(".")
        code, _, modifier = head.partition(":")
        if self.contained and (chained or code in _SPECIAL_PARAMETERS or code == "_lastUpdated"):
            raise _Unknown(f"'{name}' is not supported with _contained")
        if code in _SPECIAL_PARAMETERS and not chained:
            if modifier:
                raise _Unknown()
            if code != "_list" and resource_type in NOT_FULL_TEXT_INDEXED:
                raise _Unknown(f"{resource_type} is not full-text indexed: search its own parameters")
            return self.special(resource_type, r, code, name, value)
        parameter = parameters_for(resource_type).get(code)
        if parameter is None:
            raise _Unknown()
        if chained:
            if parameter.type != "reference" or (modifier and not _RESOURCE_TYPE.fullmatch(modifier)):
                raise _Unknown()
            return self.chain(resource_type, r, parameter, name, modifier, chained, value)
        if not _modifier_supported(parameter, modifier):
            raise _Unknown()
        return self.values(resource_type, r, parameter, name, modifier, value)

    # -- chaining, reverse chaining, _list, _text/_content -------------------------------------------

    def chain(self, resource_type: str | None, r: str, parameter: SearchParameter, name: str, modifier: str,
              chained: str, value: str) -> Condition:
        """`ref[:Type].param=value`: the target ids come from the inner condition, then the references to
        them (search_reference_param index on (resource_type, param, target_id, target_type))."""
        if modifier:
            target_types = [modifier]
        elif parameter.targets:
            target_types = list(parameter.targets)
        else:
            raise invalid(name, f"'{parameter.code}' may point to any type: name it, as '{parameter.code}:Type'")
        branches, canonicals = Condition(), Condition()
        for target_type in target_types:
            if not _known_type(target_type):
                continue
            t = self.alias("t")
            try:
                inner = self.clause(target_type, t, chained, value)
            except _Unknown:
                continue  # R4 lets a chain search every target type that has the parameter
            targets = f"FROM resource {t} WHERE {t}.resource_type = %s AND NOT {t}.deleted AND {inner.where()}"
            branches.add(f"SELECT {t}.resource_type, {t}.fhir_id {targets}", target_type, *inner.args)
            if canonical_types([target_type]):
                u = self.alias("u")
                canonicals.add(f"SELECT unnest({texts(u)}) FROM search_uri {u} "
                               f"WHERE {u}.resource_type = %s AND {u}.param = 'url' "
                               f"AND {u}.resource_id IN (SELECT {t}.id {targets})",
                               target_type, target_type, *inner.args)
        if not branches.sql:
            raise _Unknown(f"No target type of '{parameter.code}' has a search parameter '{chained}'")
        x = self.alias("x")
        result = Condition()
        type_filter = f"{x}.resource_type = %s AND " if resource_type else ""
        literal = (f"{x}.target_url IS NULL AND ({x}.target_type, {x}.target_id) IN ("
                   + " UNION ALL ".join(branches.sql) + ")")
        if canonicals.sql:
            literal = f"(({literal}) OR {x}.target_url IN (" + " UNION ALL ".join(canonicals.sql) + "))"
        result.add(f"{r}.id IN (SELECT {x}.resource_id FROM search_reference {x} WHERE {type_filter}"
                   f"{x}.param = %s AND {literal})",
                   *([resource_type] if resource_type else []), parameter.code, *branches.args, *canonicals.args)
        return result

    def has(self, resource_type: str | None, r: str, name: str, value: str) -> Condition:
        """`_has:Type:reference:param=value`: resources that a matching `Type` refers to through `reference`."""
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise invalid(name, "'_has' takes the form _has:Type:reference:parameter")
        _, referrer_type, reference_code, inner_name = parts
        if not _known_type(referrer_type):
            raise invalid(name, f"'{referrer_type}' is not a resource type")
        reference = parameters_for(referrer_type).get(reference_code)
        if reference is None or reference.type != "reference":
            raise invalid(name, f"'{reference_code}' is not a reference parameter of {referrer_type}")
        if resource_type and reference.targets and resource_type not in reference.targets:
            raise invalid(name, f"'{referrer_type}.{reference_code}' never points to {resource_type}")
        h, x = self.alias("h"), self.alias("x")
        inner = self.clause(referrer_type, h, inner_name, value)
        id_in = f"{h}.id IN ("
        if all(sql.startswith(id_in) for sql in inner.sql):
            # Index rows only exist for current resources of their type: no need to visit `resource`.
            referrer_ids = " AND ".join(f"{x}.resource_id IN (" + sql[len(id_in):] for sql in inner.sql)
            referrer_args = inner.args
        else:
            referrer_ids = (f"{x}.resource_id IN (SELECT {h}.id FROM resource {h} WHERE {h}.resource_type = %s "
                            f"AND NOT {h}.deleted AND {inner.where()})")
            referrer_args = [referrer_type, *inner.args]
        referrers = f"{x}.resource_type = %s AND {x}.param = %s AND {referrer_ids}"
        referrer_args = [referrer_type, reference_code, *referrer_args]
        type_filter = f"{x}.target_type = %s AND " if resource_type else ""
        type_args = [resource_type] if resource_type else []
        literal = f"WHERE {type_filter}{x}.target_url IS NULL AND {referrers}"
        result = Condition()
        canonical = canonical_types([resource_type] if resource_type else reference.targets or None)
        if canonical:
            # The referrers may also name them by canonical URL: both ways in one `r.id IN (... UNION ALL ...)`,
            # since `r.fhir_id IN (...) OR r.id IN (...)` could only be checked resource by resource.
            t, u = self.alias("t"), self.alias("u")
            result.add(f"{r}.id IN (SELECT {t}.id FROM search_reference {x} JOIN resource {t} "
                       f"ON {t}.resource_type = {x}.target_type AND {t}.fhir_id = {x}.target_id "
                       f"AND NOT {t}.deleted {literal} "
                       f"UNION ALL SELECT {u}.resource_id FROM search_reference {x} JOIN search_uri {u} "
                       f"ON {u}.resource_type = ANY(%s) AND {named_by(x, u)} "
                       f"WHERE {x}.target_url IS NOT NULL AND {referrers})",
                       *type_args, *referrer_args, canonical, *referrer_args)
        elif resource_type:
            result.add(f"{r}.fhir_id IN (SELECT {x}.target_id FROM search_reference {x} {literal})",
                       *type_args, *referrer_args)
        else:
            result.add(f"({r}.resource_type, {r}.fhir_id) IN (SELECT {x}.target_type, {x}.target_id "
                       f"FROM search_reference {x} {literal})", *referrer_args)
        return result

    def special(self, resource_type: str | None, r: str, code: str, name: str, value: str) -> Condition:
        values = _or_values(value)
        if any(not v.strip() for v in values):
            raise invalid(name, "empty value")
        result = Condition()
        x = self.alias("x")
        if code == "_list":
            if any(v.startswith("$") for v in values):
                raise _Unknown("Functional lists ($current-allergies, ...) are not supported")
            ids = [_unescape(v) for v in values]
            lists = (f"FROM search_reference {x} JOIN resource l ON l.id = {x}.resource_id "
                     f"WHERE l.resource_type = 'List' AND l.fhir_id = ANY(%s) AND NOT l.deleted "
                     f"AND {x}.resource_type = 'List' AND {x}.param = 'item' AND {x}.target_url IS NULL")
            if resource_type:
                result.add(f"{r}.fhir_id IN (SELECT {x}.target_id {lists} AND {x}.target_type = %s)",
                           ids, resource_type)
            else:
                result.add(f"({r}.resource_type, {r}.fhir_id) IN (SELECT {x}.target_type, {x}.target_id {lists})",
                           ids)
            return result
        queries = " || ".join(["websearch_to_tsquery('english', %s)"] * len(values))
        type_filter = f"{x}.resource_type = %s AND " if resource_type else ""
        result.add(f"{r}.id IN (SELECT {x}.resource_id FROM search_text {x} WHERE {type_filter}{x}.param = %s "
                   f"AND {x}.document @@ ({queries}))",
                   *([resource_type] if resource_type else []), code,
                   *(normalize_string(_unescape(v), limit=None) for v in values))
        return result

    # -- a parameter's own values -----------------------------------------------------------------------

    def values(self, resource_type: str | None, r: str, parameter: SearchParameter, name: str, modifier: str,
               value: str) -> Condition:
        result = Condition()
        if modifier == "missing":
            if value not in ("true", "false"):
                raise invalid(name, "':missing' takes true or false")
            if parameter.code in ("_id", "_lastUpdated"):
                if value == "true":
                    result.add("false")
                return result
            param = f"{parameter.code}$0" if parameter.type == "composite" else parameter.code
            exists = self.index_subquery(INDEX_TABLES[_table_type(parameter)], param, resource_type, r,
                                     correlated=True)
            result.add(("NOT " if value == "true" else "") + exists.sql[0], *exists.args)
            return result
        values = _or_values(value)
        if any(v == "" for v in values):
            raise invalid(name, "empty value")
        if parameter.code == "_id":
            # A contained resource's `_id` row holds its id as the code.
            result.add(f"{r}.{'code' if self.contained else 'fhir_id'} = ANY(%s)", [_unescape(v) for v in values])
            return result
        if parameter.code == "_lastUpdated":
            alternatives = Condition()
            for v in values:
                _date_condition(alternatives, name, v, f"{r}.last_updated", f"{r}.last_updated")
            result.add("(" + " OR ".join(alternatives.sql) + ")", *alternatives.args)
            return result
        if parameter.type == "composite":
            return self.composite(resource_type, r, parameter, name, values)
        if parameter.type == "date":
            return self.dates(resource_type, r, parameter, name, [value])
        alternatives = Condition()
        for v in values:
            _VALUE_CONDITIONS[parameter.type](alternatives, name, modifier, v, "s", self.base_url)
        table = _MODIFIER_ROWS.get(modifier, INDEX_TABLES[parameter.type])
        param = f"{parameter.code}:{modifier}" if modifier in _MODIFIER_ROWS else parameter.code
        negated = modifier in _NEGATED_MODIFIERS
        subquery = self.index_subquery(table, param, resource_type, r, correlated=negated,
                                   extra="(" + " OR ".join(alternatives.sql) + ")")
        result.add(("NOT " if negated else "") + subquery.sql[0], *subquery.args, *alternatives.args)
        return result

    def dates(self, resource_type: str | None, r: str, parameter: SearchParameter, name: str,
              and_values: list[str]) -> Condition:
        """Date values (each an OR list) that one index row must all satisfy: one value, or several of a
        parameter with one row per resource (`_same_row_dates`).

        Besides the prefixes' own comparisons, the row's [low, high] must overlap the span every value
        implies (`_date_span`): an overlap the GiST index search_date_span finds without reading the rows
        that only one end of the range excludes."""
        filters = Condition()
        span_low: datetime | None = None
        span_high: datetime | None = None
        for value in and_values:
            values = _or_values(value)
            if any(v == "" for v in values):
                raise invalid(name, "empty value")
            alternatives = Condition()
            lows, highs = [], []
            for v in values:
                _date_value_condition(alternatives, name, "", v, "s", self.base_url)
                low, high = _date_span(name, v)
                lows.append(low)
                highs.append(high)
            filters.add("(" + " OR ".join(alternatives.sql) + ")", *alternatives.args)
            # The values of one OR list span from the lowest start to the highest end (None: unbounded).
            low = None if None in lows else min(lows)
            high = None if None in highs else max(highs)
            span_low = low if span_low is None or (low is not None and low > span_low) else span_low
            span_high = high if span_high is None or (high is not None and high < span_high) else span_high
        if span_low is not None and span_high is not None and span_low > span_high:
            # Spans that do not meet (`lt2000&gt2010`): a row reaching into both covers the gap between them.
            span_low, span_high = span_high, span_low
        if span_low is not None or span_high is not None:
            filters.sql.insert(0, f"{_DATE_SPAN} && tstzrange(%s, %s, '[]')")
            filters.args[:0] = [span_low, span_high]
        subquery = self.index_subquery(INDEX_TABLES["date"], parameter.code, resource_type, r, correlated=False,
                                   extra=" AND ".join(filters.sql))
        return Condition(subquery.sql, [*subquery.args, *filters.args])

    def composite(self, resource_type: str | None, r: str, parameter: SearchParameter, name: str,
                  values: list[str]) -> Condition:
        """Component rows of one element joined on (resource_id, element): both parts match together."""
        components = parameter.components
        aliases = [self.alias("c") for _ in components]
        alternatives = Condition()
        for v in values:
            parts = split_escaped(v, "$")
            if len(parts) != len(components):
                raise invalid(name, f"'{v}' needs {len(components)} parts separated by '$'")
            both = Condition()
            for part, component, c in zip(parts, components, aliases):
                if not part:
                    raise invalid(name, f"'{v}' has an empty part")
                one = Condition()
                _VALUE_CONDITIONS[component.type](one, name, "", part, c, self.base_url)
                both.add(one.sql[0], *one.args)
            alternatives.add("(" + " AND ".join(both.sql) + ")", *both.args)
        first = aliases[0]
        # Element keys restart at 0 in each contained resource: its components must share its contained id.
        same_contained = f" AND {{c}}.contained_id = {first}.contained_id" if self.contained else ""
        joins, join_args = [], []
        for position, (component, c) in enumerate(zip(components[1:], aliases[1:]), start=1):
            joins.append(f"JOIN {INDEX_TABLES[component.type]} {c} ON {c}.resource_id = {first}.resource_id "
                         f"AND {c}.element = {first}.element{same_contained.format(c=c)} AND {c}.param = %s")
            join_args.append(f"{parameter.code}${position}")
        type_filter = f"{first}.resource_type = %s AND " if resource_type else ""
        index_type = contained_type(resource_type) if self.contained and resource_type else resource_type
        resource_key, row_key = _keys(r, first, self.contained)
        result = Condition()
        result.add(f"{resource_key} IN (SELECT {row_key} FROM {INDEX_TABLES[components[0].type]} {first} "
                   f"{' '.join(joins)} WHERE {type_filter}{first}.param = %s AND ("
                   + " OR ".join(alternatives.sql) + "))",
                   *join_args, *([index_type] if resource_type else []), f"{parameter.code}$0",
                   *alternatives.args)
        return result


def _table_type(parameter: SearchParameter) -> str:
    return parameter.components[0].type if parameter.type == "composite" else parameter.type


def _keys(r: str, s: str, contained: bool) -> tuple[str, str]:
    """The key of resource `r` and the matching key of index rows `s`: a contained resource is known by its
    container's id (its `_id` row's resource_id) and its own id."""
    if contained:
        return f"({r}.resource_id, {r}.contained_id)", f"{s}.resource_id, {s}.contained_id"
    return f"{r}.id", f"{s}.resource_id"


def _index_subquery(table: str, param: str, resource_type: str | None, r: str, *, correlated: bool,
                    extra: str | None = None, contained: bool = False) -> Condition:
    """`r.id IN (rows of this parameter ...)`, or `EXISTS (...)` when it is to be negated.

    `resource_type` is the rows' own: `#Type` for contained resources (`contained`). Across all types, the
    rows of contained resources are left out: they are not the resources searched.
    """
    filters = ["s.param = %s"]
    args: list[Any] = [param]
    if resource_type is not None:
        filters.insert(0, "s.resource_type = %s")
        args.insert(0, resource_type)
    else:
        filters.append("s.contained_id IS NULL")
    if extra:
        filters.append(extra)
    resource_key, row_key = _keys(r, "s", contained)
    result = Condition()
    if correlated:
        same = f"s.resource_id = {r}.resource_id AND s.contained_id = {r}.contained_id" if contained \
            else f"s.resource_id = {r}.id"
        result.add(f"EXISTS (SELECT 1 FROM {table} s WHERE {same} AND {' AND '.join(filters)})", *args)
    else:
        result.add(f"{resource_key} IN (SELECT {row_key} FROM {table} s WHERE {' AND '.join(filters)})", *args)
    return result


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_condition(out: Condition, name: str, modifier: str, value: str, s: str, base_url: str | None) -> None:
    text = _unescape(value)
    if modifier == "exact":
        out.add(f"{s}.value_exact = %s", text)
    elif modifier == "contains":
        out.add(f"{s}.value LIKE %s", "%" + _like_prefix(normalize_string(text)) + "%")
    else:
        out.add(f"{s}.value LIKE %s", _like_prefix(normalize_string(text)) + "%")


def _system_and_code(name: str, value: str) -> tuple[str | None, str]:
    """`[system|]code` → (system or None when absent, code); `|code` gives ('', code)."""
    parts = split_escaped(value, "|")
    if len(parts) == 1:
        return None, _unescape(parts[0])
    if len(parts) != 2 or not parts[1]:
        raise invalid(name, f"'{value}' is not [system|]code")
    return _unescape(parts[0]), _unescape(parts[1])


def _token_condition(out: Condition, name: str, modifier: str, value: str, s: str, base_url: str | None) -> None:
    if modifier == "text":
        text = _like_prefix(normalize_string(_unescape(value)))
        out.add(f"({s}.text LIKE %s OR {s}.text LIKE %s)", text + "%", "% " + text + "%")
        return
    if modifier in ("in", "not-in"):
        # Expanded before the query runs (value_sets.resolve): the arguments stand for its arrays.
        sql, parts = value_sets.membership_sql(s, name, _unescape(value))
        out.add(sql, *parts)
        return
    if modifier in ("below", "above"):
        system, code = _system_and_code(name, value)
        given, wanted = ("ancestor", "code") if modifier == "below" else ("code", "ancestor")
        system_filter = " AND c.system = %s" if system else ""
        exact = f"{s}.code = %s" + (f" AND {s}.system = %s" if system else "")
        out.add(f"(({exact}) OR ({s}.system, {s}.code) IN (SELECT c.system, c.{wanted} FROM search_concept c "
                f"WHERE c.resource_type = 'CodeSystem' AND c.{given} = %s{system_filter}))",
                code, *([system] if system else []), code, *([system] if system else []))
        return
    if modifier == "of-type":
        parts = split_escaped(value, "|")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise invalid(name, f"'{value}' is not type-system|type-code|value")
        type_system, type_code, identifier = (_unescape(part) for part in parts)
        if type_system:
            out.add(f"({s}.system = %s AND {s}.code = %s)", type_system, f"{type_code}|{identifier}")
        else:
            out.add(f"{s}.code = %s", f"{type_code}|{identifier}")
        return
    parts = split_escaped(value, "|")
    if len(parts) == 1:
        out.add(f"{s}.code = %s", _unescape(parts[0]))
        return
    if len(parts) != 2:
        raise invalid(name, f"'{value}' is not [system]|[code]")
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if not system and not code:
        raise invalid(name, "'|' needs a system or a code")
    if not system:
        out.add(f"({s}.system IS NULL AND {s}.code = %s)", code)
    elif not code:
        out.add(f"{s}.system = %s", system)
    else:
        out.add(f"({s}.system = %s AND {s}.code = %s)", system, code)


def _reference_condition(out: Condition, name: str, modifier: str, value: str, s: str,
                         base_url: str | None) -> None:
    if modifier == "identifier":
        _token_condition(out, name, "", value, s, base_url)
        return
    text = _unescape(value)
    if base_url and text.startswith(base_url + "/"):
        text = text[len(base_url) + 1:]
    if "/" not in text and ":" not in text:
        if modifier:
            out.add(f"({s}.target_type = %s AND {s}.target_id = %s AND {s}.target_url IS NULL)", modifier, text)
        else:
            out.add(f"({s}.target_id = %s AND {s}.target_url IS NULL)", text)
        return
    target = reference_target(text)
    if target is None:
        raise invalid(name, f"'{value}' is not a reference")
    if target.target_url is not None:
        out.add(f"{s}.target_url = %s", target.target_url)
        return
    if modifier and modifier != target.target_type:
        raise invalid(name, f"'{value}' is not a {modifier} reference")
    out.add(f"({s}.target_type = %s AND {s}.target_id = %s AND {s}.target_url IS NULL)",
            target.target_type, target.target_id)


def _uri_condition(out: Condition, name: str, modifier: str, value: str, s: str, base_url: str | None) -> None:
    text = _unescape(value)
    if modifier == "below":
        out.add(f"{s}.value LIKE %s", _like_prefix(text) + "%")
    elif modifier == "above":
        out.add(f"%s LIKE (replace(replace(replace({s}.value, '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%')",
                text)
    else:
        out.add(f"{s}.value = %s", text)


def _prefixed(name: str, value: str) -> tuple[str, str]:
    match = _PREFIXED.fullmatch(value)
    assert match is not None
    prefix, rest = match.group(1) or "eq", match.group(2)
    if not rest or not (rest[0].isdigit() or rest[0] in "+-."):
        raise invalid(name, f"'{value}' needs one of the prefixes {', '.join(PREFIXES)} followed by a value")
    return prefix, rest


def _parsed_date(name: str, value: str) -> tuple[str, datetime, datetime]:
    """(prefix, low, high) of a date search value; a 400 when it is not one."""
    prefix, text = _prefixed(name, value)
    try:
        return prefix, *date_range(text)
    except ValueError:
        raise invalid(name, f"'{text}' is not a valid date") from None


def _date_span(name: str, value: str) -> tuple[datetime | None, datetime | None]:
    """The span (None: unbounded) that a stored range matching `value` overlaps, whatever its prefix: what
    an overlap index can look for before the prefix's own comparison is applied."""
    prefix, search_low, search_high = _parsed_date(name, value)
    if prefix in ("eq", "ap"):  # ap widens by 10% of the distance from now: the comparison decides
        return (search_low, search_high) if prefix == "eq" else (None, None)
    if prefix in ("gt", "ge", "sa"):
        return (search_low, None)
    if prefix in ("lt", "le", "eb"):
        return (None, search_high)
    return (None, None)


def _date_condition(out: Condition, name: str, value: str, low: str, high: str) -> None:
    prefix, search_low, search_high = _parsed_date(name, value)
    contained = f"({low} >= %s AND {high} <= %s)"
    if prefix == "eq":
        out.add(contained, search_low, search_high)
    elif prefix == "ne":
        out.add(f"NOT {contained}", search_low, search_high)
    elif prefix == "gt":
        out.add(f"{high} > %s", search_high)
    elif prefix == "lt":
        out.add(f"{low} < %s", search_low)
    elif prefix == "ge":
        out.add(f"({high} > %s OR {contained})", search_high, search_low, search_high)
    elif prefix == "le":
        out.add(f"({low} < %s OR {contained})", search_low, search_low, search_high)
    elif prefix == "sa":
        out.add(f"{low} > %s", search_high)
    elif prefix == "eb":
        out.add(f"{high} < %s", search_low)
    else:  # ap: overlaps the search range widened by 10% of its distance from now
        gap = abs(datetime.now(timezone.utc) - search_low) / 10
        widened_low = search_low - gap if search_low - datetime.min.replace(tzinfo=timezone.utc) > gap else search_low
        widened_high = search_high + gap if FAR_FUTURE - search_high > gap else FAR_FUTURE
        out.add(f"({low} <= %s AND {high} >= %s)", widened_high, widened_low)


def _date_value_condition(out: Condition, name: str, modifier: str, value: str, s: str,
                          base_url: str | None) -> None:
    _date_condition(out, name, value, f"{s}.low", f"{s}.high")


def _number_condition(out: Condition, name: str, text_value: str, columns: tuple[str, str],
                      factor: Decimal = Decimal(1)) -> None:
    """R4 prefixes over the stored range [low, high) that the value's precision implies (or a Range's
    bounds): eq = the stored range lies within the search value's range; gt/lt/ge/le compare with the
    exact search value; sa/eb = the ranges do not overlap; ap = overlap with a 10% margin."""
    prefix, text = _prefixed(name, text_value)
    try:
        number = decimal_of(text)
    except ValueError:
        raise invalid(name, f"'{text}' is not a number") from None
    search_low, search_high = number_range(number)
    number, search_low, search_high = number * factor, search_low * factor, search_high * factor
    low, high = columns
    within = f"({low} >= %s AND {high} <= %s)"
    if prefix == "eq":  # `low < search_high` follows; it lets an index on low bound the scan
        out.add(f"({low} >= %s AND {low} < %s AND {high} <= %s)", search_low, search_high, search_high)
    elif prefix == "ne":
        out.add(f"NOT {within}", search_low, search_high)
    elif prefix == "gt":
        out.add(f"{high} > %s", number)
    elif prefix == "lt":
        out.add(f"{low} < %s", number)
    elif prefix == "ge":
        out.add(f"({high} > %s OR {within})", number, search_low, search_high)
    elif prefix == "le":
        out.add(f"({low} < %s OR {within})", number, search_low, search_high)
    elif prefix == "sa":
        out.add(f"{low} >= %s", search_high)
    elif prefix == "eb":
        out.add(f"{high} <= %s", search_low)
    else:  # ap: within 10% of the value
        margin = abs(number) / Decimal(10)
        out.add(f"({low} <= %s AND {high} >= %s)", number + margin, number - margin)


def _number_value_condition(out: Condition, name: str, modifier: str, value: str, s: str,
                            base_url: str | None) -> None:
    _number_condition(out, name, value, (f"{s}.low", f"{s}.high"))


def _quantity_condition(out: Condition, name: str, modifier: str, value: str, s: str,
                        base_url: str | None) -> None:
    """`[prefix]number[|system|code]`; a UCUM unit the conversion table knows compares in canonical units."""
    parts = split_escaped(value, "|")
    if len(parts) not in (1, 3):
        raise invalid(name, f"'{value}' is not [prefix][number]|[system]|[code]")
    both = Condition()
    system, code = (_unescape(parts[1]), _unescape(parts[2])) if len(parts) == 3 else ("", "")
    conversion = ucum_canonical(code) if system == UCUM and code else None
    if conversion is not None:
        factor, canonical = conversion
        both.add(f"{s}.canonical_code = %s", canonical)
        _number_condition(both, name, parts[0], (f"{s}.canonical_low", f"{s}.canonical_high"), factor)
    else:
        _number_condition(both, name, parts[0], (f"{s}.low", f"{s}.high"))
        if system:
            both.add(f"{s}.system = %s", system)
            if code:
                both.add(f"{s}.code = %s", code)
        elif code:
            both.add(f"({s}.code = %s OR {s}.unit = %s)", code, code)
    out.add("(" + " AND ".join(both.sql) + ")", *both.args)


_VALUE_CONDITIONS = {
    "string": _string_condition, "token": _token_condition, "reference": _reference_condition,
    "uri": _uri_condition, "date": _date_value_condition, "number": _number_value_condition,
    "quantity": _quantity_condition,
}
