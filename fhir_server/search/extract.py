"""Index extraction: the search-index rows of one resource, driven by its search parameters."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhir_server.search.parameters import SearchParameter, parameters_for
from fhir_server.search.values import (
    FAR_FUTURE, FAR_PAST, ReferenceTarget, decimal_of, date_range, normalize_string, number_range,
    reference_target,
)

StringRow = tuple[str, str, str]
TokenRow = tuple[str, str | None, str | None, str | None]
DateRow = tuple[str, datetime, datetime]
NumberRow = tuple[str, Decimal, Decimal, Decimal]
QuantityRow = tuple[str, Decimal, Decimal, Decimal, str | None, str | None, str | None]
UriRow = tuple[str, str]
ReferenceRow = tuple[str | None, str | None, str | None, str | None]

ISO_4217 = "urn:iso:std:iso:4217"
MAX_INDEXED_TEXT = 1000
_NAME_PARTS = ("prefix", "given", "family", "suffix")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country")


@dataclass(slots=True)
class IndexRows:
    """Rows per index table, without resource_id and resource_type (the storage layer adds them)."""

    string: list[StringRow] = field(default_factory=list)
    token: list[TokenRow] = field(default_factory=list)
    date: list[DateRow] = field(default_factory=list)
    number: list[NumberRow] = field(default_factory=list)
    quantity: list[QuantityRow] = field(default_factory=list)
    uri: list[UriRow] = field(default_factory=list)
    reference: list[ReferenceRow] = field(default_factory=list)


def extract_index(resource: dict[str, Any], base_url: str | None = None) -> IndexRows:
    """Every index row of `resource` (its search parameter values, plus a param=None row per other reference).

    References under `base_url` (this server) are indexed as the relative `Type/id` they stand for.
    Values that cannot be indexed (a malformed date, say) are skipped: validation reports them, not indexing.
    """
    rows: dict[str, dict[tuple, None]] = {table: {} for table in IndexRows.__slots__}  # ordered sets
    local_prefix = base_url.rstrip("/") + "/" if base_url else None
    for parameter in parameters_for(resource.get("resourceType")).values():
        if parameter.evaluate is None:
            continue
        values = parameter.evaluate(resource)
        if not values:
            continue
        if parameter.type == "reference":
            _references(rows, parameter, values, local_prefix)
        else:
            _ADD[parameter.type](rows, parameter, values)
    covered = {row[1:] for row in rows["reference"]}
    for reference in _all_references(resource):
        target = _target(reference, local_prefix)
        if target is not None and target not in covered:
            covered.add(target)
            rows["reference"][(None, *target)] = None
    # String rows are already cut to STRING_INDEX_LENGTH where indexed (value_exact is not indexed).
    return IndexRows(**{table: list(found) if table == "string" else [_bounded(row) for row in found]
                        for table, found in rows.items()})


def _bounded(row: tuple) -> tuple:
    """The row with long texts cut: a B-tree entry must stay under ~2.7 KB, or the write would fail."""
    if any(isinstance(value, str) and len(value) > MAX_INDEXED_TEXT for value in row):
        return tuple(value[:MAX_INDEXED_TEXT] if isinstance(value, str) else value for value in row)
    return row


def _target(reference: str, local_prefix: str | None) -> ReferenceTarget | None:
    if local_prefix and reference.startswith(local_prefix):
        reference = reference[len(local_prefix):]
    return reference_target(reference)


def _strings(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["string"]
    for value in values:
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = _name_or_address_texts(value)
        else:
            continue
        for text in texts:
            if text:
                found[(parameter.code, normalize_string(text), text)] = None


def _name_or_address_texts(value: dict[str, Any]) -> list[str]:
    """Each part of a HumanName or Address, and its full text (R4: 'any of the string fields')."""
    parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
    texts = [text for key in parts for text in _listed(value.get(key)) if isinstance(text, str)]
    full = value.get("text")
    if not isinstance(full, str):
        full = " ".join(texts) if len(texts) > 1 else None
    return [*texts, full] if full else texts


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _tokens(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["token"]
    code = parameter.code
    for value in values:
        if isinstance(value, str):
            found[(code, None, value, None)] = None
        elif isinstance(value, bool):
            found[(code, None, "true" if value else "false", None)] = None
        elif isinstance(value, (int, Decimal, float)):
            found[(code, None, str(value), None)] = None
        elif isinstance(value, dict):
            _token_element(found, code, value)


def _token_element(found: dict, code: str, value: dict[str, Any]) -> None:
    if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
        # CodeableConcept: one row per coding; its text, else the coding's display, serves :text.
        text = value.get("text")
        codings = value.get("coding") or []
        for coding in codings:
            if isinstance(coding, dict):
                display = text or coding.get("display")
                found[(code, coding.get("system"), coding.get("code"), _normalized(display))] = None
        if not codings and isinstance(text, str):
            found[(code, None, None, normalize_string(text))] = None
    elif "code" in value:  # Coding
        found[(code, value.get("system"), value.get("code"), _normalized(value.get("display")))] = None
    elif "value" in value:  # Identifier or ContactPoint
        identifier_type = value.get("type")
        text = identifier_type.get("text") if isinstance(identifier_type, dict) else None
        found[(code, value.get("system"), str(value["value"]), _normalized(text))] = None


def _normalized(text: Any) -> str | None:
    return normalize_string(text) if isinstance(text, str) else None


def _dates(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["date"]
    for value in values:
        if isinstance(value, str):
            bounds = _date_bounds(value)
            if bounds:
                found[(parameter.code, *bounds)] = None
        elif isinstance(value, dict):
            if "start" in value or "end" in value:  # Period; a missing bound is open
                start = _date_bounds(value.get("start")) if value.get("start") else (FAR_PAST, FAR_PAST)
                end = _date_bounds(value.get("end")) if value.get("end") else (FAR_FUTURE, FAR_FUTURE)
                if start and end:
                    found[(parameter.code, start[0], end[1])] = None
            elif "event" in value:  # Timing
                for event in value["event"]:
                    bounds = _date_bounds(event)
                    if bounds:
                        found[(parameter.code, *bounds)] = None


def _date_bounds(value: Any) -> tuple[datetime, datetime] | None:
    try:
        return date_range(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _numbers(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["number"]
    for value in values:
        if isinstance(value, dict):
            value = value.get("value")
        try:
            number = decimal_of(value)
        except ValueError:
            continue
        found[(parameter.code, number, *number_range(number))] = None


def _quantities(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["quantity"]
    for value in values:
        if not isinstance(value, dict):
            continue
        if "low" in value or "high" in value:  # Range: index both bounds' values as one row
            low, high = value.get("low") or {}, value.get("high") or {}
            unit_source = low or high
            try:
                low_value = decimal_of(low["value"]) if "value" in low else None
                high_value = decimal_of(high["value"]) if "value" in high else None
            except ValueError:
                continue
            point = low_value if low_value is not None else high_value
            if point is None:
                continue
            found[(parameter.code, point, low_value if low_value is not None else point,
                   high_value if high_value is not None else point, unit_source.get("system"),
                   unit_source.get("code"), unit_source.get("unit"))] = None
            continue
        try:
            number = decimal_of(value.get("value"))
        except ValueError:
            continue
        if "currency" in value:  # Money
            system, unit_code, unit = ISO_4217, value["currency"], value["currency"]
        else:
            system, unit_code, unit = value.get("system"), value.get("code"), value.get("unit")
        found[(parameter.code, number, *number_range(number), system, unit_code, unit)] = None


def _uris(rows: dict, parameter: SearchParameter, values: list[Any]) -> None:
    found = rows["uri"]
    for value in values:
        if isinstance(value, str):
            found[(parameter.code, value)] = None


def _references(rows: dict, parameter: SearchParameter, values: list[Any], local_prefix: str | None) -> None:
    found = rows["reference"]
    for value in values:
        if isinstance(value, dict):
            value = value.get("reference")
        if isinstance(value, str):  # a Reference, or a canonical URL
            target = _target(value, local_prefix)
            if target is not None:
                found[(parameter.code, *target)] = None


_ADD = {"string": _strings, "token": _tokens, "date": _dates, "number": _numbers, "quantity": _quantities,
        "uri": _uris}


def _all_references(node: Any) -> list[str]:
    """Every `reference` string anywhere in the resource: extensions, contained resources, backbone elements."""
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str):
                found.append(reference)
            stack.extend(value for value in item.values() if isinstance(value, (dict, list)))
        elif isinstance(item, list):
            stack.extend(value for value in item if isinstance(value, (dict, list)))
    return found
