"""Search parameters of a request → a parameterised SQL condition over `resource r` and the index tables."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from fhir_server.errors import FHIRError
from fhir_server.search.parameters import SearchParameter, parameters_for
from fhir_server.search.values import (
    FAR_FUTURE, date_range, decimal_of, normalize_string, number_range, reference_target,
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
    "token": {"not", "text"},
    "reference": set(),
    "uri": {"below", "above"},
    "date": set(), "number": set(), "quantity": set(),
}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")


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


def parse_query(resource_type: str | None, query: list[tuple[str, str]], *, strict: bool,
                base_url: str | None = None) -> ParsedQuery:
    """The SQL condition for the filter parameters of `query`; result and format parameters are skipped.

    Unknown parameters raise a 400 when `strict`, else they are listed in `unknown`; malformed values
    always raise a 400.
    """
    known = parameters_for(resource_type)
    condition = Condition()
    if resource_type is not None:
        condition.add("r.resource_type = %s", resource_type)
    condition.add("NOT r.deleted")
    accepted: list[tuple[str, str]] = []
    unknown: list[str] = []
    for name, value in query:
        if name in RESULT_PARAMETERS or name in FORMAT_PARAMETERS:
            continue
        code, _, modifier = name.partition(":")
        parameter = known.get(code)
        if parameter is None or not _modifier_supported(parameter, modifier):
            if strict:
                raise unsupported(name, resource_type)
            unknown.append(name)
            continue
        _add_clause(condition, resource_type, parameter, name, modifier, value, base_url)
        accepted.append((name, value))
    return ParsedQuery(condition, accepted, unknown)


def _modifier_supported(parameter: SearchParameter, modifier: str) -> bool:
    if not modifier or modifier == "missing":
        return True
    if parameter.code in ("_id", "_lastUpdated"):
        return False
    if parameter.type == "reference":
        return bool(_RESOURCE_TYPE.fullmatch(modifier)) and (not parameter.targets or modifier in parameter.targets)
    return modifier in _MODIFIERS.get(parameter.type, set())


def _add_clause(condition: Condition, resource_type: str | None, parameter: SearchParameter, name: str,
                modifier: str, value: str, base_url: str | None) -> None:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise invalid(name, "':missing' takes true or false")
        if parameter.code in ("_id", "_lastUpdated"):
            if value == "true":
                condition.add("false")
            return
        exists = _index_subquery(parameter, resource_type, correlated=True)
        condition.add(("NOT " if value == "true" else "") + exists.sql[0], *exists.args)
        return
    values = _or_values(value)
    if any(v == "" for v in values):
        raise invalid(name, "empty value")
    if parameter.code == "_id":
        condition.add("r.fhir_id = ANY(%s)", [_unescape(v) for v in values])
        return
    if parameter.code == "_lastUpdated":
        alternatives = Condition()
        for v in values:
            _date_condition(alternatives, name, v, "r.last_updated", "r.last_updated")
        condition.add("(" + " OR ".join(alternatives.sql) + ")", *alternatives.args)
        return
    alternatives = Condition()
    for v in values:
        _VALUE_CONDITIONS[parameter.type](alternatives, parameter, name, modifier, v, base_url)
    negated = modifier == "not"
    subquery = _index_subquery(parameter, resource_type, correlated=negated,
                               extra="(" + " OR ".join(alternatives.sql) + ")")
    condition.add(("NOT " if negated else "") + subquery.sql[0], *subquery.args, *alternatives.args)


def _index_subquery(parameter: SearchParameter, resource_type: str | None, *, correlated: bool,
                    extra: str | None = None) -> Condition:
    """`r.id IN (rows of this parameter ...)`, or `EXISTS (...)` when it is to be negated."""
    table = INDEX_TABLES[parameter.type]
    filters = ["s.param = %s"]
    args: list[Any] = [parameter.code]
    if resource_type is not None:
        filters.insert(0, "s.resource_type = %s")
        args.insert(0, resource_type)
    if extra:
        filters.append(extra)
    result = Condition()
    if correlated:
        result.add(f"EXISTS (SELECT 1 FROM {table} s WHERE s.resource_id = r.id AND {' AND '.join(filters)})",
                   *args)
    else:
        result.add(f"r.id IN (SELECT s.resource_id FROM {table} s WHERE {' AND '.join(filters)})", *args)
    return result


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                      base_url: str | None) -> None:
    text = _unescape(value)
    if modifier == "exact":
        out.add("s.value_exact = %s", text)
    elif modifier == "contains":
        out.add("s.value LIKE %s", "%" + _like_prefix(normalize_string(text)) + "%")
    else:
        out.add("s.value LIKE %s", _like_prefix(normalize_string(text)) + "%")


def _token_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                     base_url: str | None) -> None:
    if modifier == "text":
        out.add("s.text LIKE %s", _like_prefix(normalize_string(_unescape(value))) + "%")
        return
    parts = split_escaped(value, "|")
    if len(parts) == 1:
        out.add("s.code = %s", _unescape(parts[0]))
        return
    if len(parts) != 2:
        raise invalid(name, f"'{value}' is not [system]|[code]")
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if not system and not code:
        raise invalid(name, "'|' needs a system or a code")
    if not system:
        out.add("(s.system IS NULL AND s.code = %s)", code)
    elif not code:
        out.add("s.system = %s", system)
    else:
        out.add("(s.system = %s AND s.code = %s)", system, code)


def _reference_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                         base_url: str | None) -> None:
    text = _unescape(value)
    if base_url and text.startswith(base_url.rstrip("/") + "/"):
        text = text[len(base_url.rstrip("/")) + 1:]
    if "/" not in text and ":" not in text:
        target_type = modifier or (parameter.targets[0] if len(parameter.targets) == 1 else None)
        if target_type:
            out.add("(s.target_type = %s AND s.target_id = %s AND s.target_url IS NULL)", target_type, text)
        else:
            out.add("(s.target_id = %s AND s.target_url IS NULL)", text)
        return
    target = reference_target(text)
    if target is None:
        raise invalid(name, f"'{value}' is not a reference")
    if target.target_url is not None:
        out.add("s.target_url = %s", target.target_url)
        return
    if modifier and modifier != target.target_type:
        raise invalid(name, f"'{value}' is not a {modifier} reference")
    out.add("(s.target_type = %s AND s.target_id = %s AND s.target_url IS NULL)",
            target.target_type, target.target_id)


def _uri_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                   base_url: str | None) -> None:
    text = _unescape(value)
    if modifier == "below":
        out.add("s.value LIKE %s", _like_prefix(text) + "%")
    elif modifier == "above":
        out.add("%s LIKE (replace(replace(replace(s.value, '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%')",
                text)
    else:
        out.add("s.value = %s", text)


def _prefixed(name: str, value: str) -> tuple[str, str]:
    match = _PREFIXED.fullmatch(value)
    assert match is not None
    prefix, rest = match.group(1) or "eq", match.group(2)
    if not rest or not (rest[0].isdigit() or rest[0] in "+-."):
        raise invalid(name, f"'{value}' needs one of the prefixes {', '.join(PREFIXES)} followed by a value")
    return prefix, rest


def _date_condition(out: Condition, name: str, value: str, low: str, high: str) -> None:
    prefix, text = _prefixed(name, value)
    try:
        search_low, search_high = date_range(text)
    except ValueError:
        raise invalid(name, f"'{text}' is not a valid date") from None
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


def _date_value_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                          base_url: str | None) -> None:
    _date_condition(out, name, value, "s.low", "s.high")


def _number_condition(out: Condition, name: str, value: str) -> None:
    prefix, text = _prefixed(name, value)
    try:
        number = decimal_of(text)
    except ValueError:
        raise invalid(name, f"'{text}' is not a number") from None
    low, high = number_range(number)
    if prefix == "eq":
        out.add("(s.value >= %s AND s.value < %s)", low, high)
    elif prefix == "ne":
        out.add("NOT (s.value >= %s AND s.value < %s)", low, high)
    elif prefix in ("gt", "sa"):
        out.add("s.value > %s", number)
    elif prefix in ("lt", "eb"):
        out.add("s.value < %s", number)
    elif prefix == "ge":
        out.add("s.value >= %s", number)
    elif prefix == "le":
        out.add("s.value <= %s", number)
    else:  # ap: within 10%
        margin = abs(number) / Decimal(10)
        out.add("(s.value >= %s AND s.value <= %s)", number - margin, number + margin)


def _number_value_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                            base_url: str | None) -> None:
    _number_condition(out, name, value)


def _quantity_condition(out: Condition, parameter: SearchParameter, name: str, modifier: str, value: str,
                        base_url: str | None) -> None:
    parts = split_escaped(value, "|")
    if len(parts) not in (1, 3):
        raise invalid(name, f"'{value}' is not [prefix][number]|[system]|[code]")
    both = Condition()
    _number_condition(both, name, parts[0])
    if len(parts) == 3:
        system, code = _unescape(parts[1]), _unescape(parts[2])
        if system:
            both.add("s.system = %s", system)
            if code:
                both.add("s.code = %s", code)
        elif code:
            both.add("(s.code = %s OR s.unit = %s)", code, code)
    out.add("(" + " AND ".join(both.sql) + ")", *both.args)


_VALUE_CONDITIONS = {
    "string": _string_condition, "token": _token_condition, "reference": _reference_condition,
    "uri": _uri_condition, "date": _date_value_condition, "number": _number_value_condition,
    "quantity": _quantity_condition,
}
