"""Index extraction: the search-index rows of one resource, driven by its search parameters."""

import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhir_server.search.parameters import SearchParameter, parameters_for
from fhir_server.search.values import (
    FAR_FUTURE, FAR_PAST, UCUM, ReferenceTarget, decimal_of, date_range, normalize_string, number_range,
    reference_target, ucum_canonical,
)

# The columns of each index table `search_<name>` after resource_id and resource_type, with their SQL
# types, in row order: the storage layer builds its statements from this. `element` (the composite
# element key, see migration 0002) is last and only composite component rows carry it; a shorter row
# leaves it NULL.
INDEX_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "string": (("param", "text"), ("value", "text"), ("value_exact", "text"), ("element", "integer")),
    "token": (("param", "text"), ("system", "text"), ("code", "text"), ("text", "text"), ("element", "integer")),
    "date": (("param", "text"), ("low", "timestamptz"), ("high", "timestamptz"), ("element", "integer")),
    "number": (("param", "text"), ("value", "numeric"), ("low", "numeric"), ("high", "numeric"),
               ("element", "integer")),
    "quantity": (("param", "text"), ("value", "numeric"), ("low", "numeric"), ("high", "numeric"),
                 ("system", "text"), ("code", "text"), ("unit", "text"), ("canonical_code", "text"),
                 ("canonical_value", "numeric"), ("canonical_low", "numeric"), ("canonical_high", "numeric"),
                 ("element", "integer")),
    "uri": (("param", "text"), ("value", "text"), ("element", "integer")),
    "reference": (("param", "text"), ("target_type", "text"), ("target_id", "text"), ("target_url", "text"),
                  ("element", "integer")),
    "text": (("param", "text"), ("value", "text")),
    "concept": (("url", "text"), ("system", "text"), ("code", "text"), ("ancestor", "text")),
}

StringRow = tuple[str, str, str]
TokenRow = tuple[str, str | None, str | None, str | None]
DateRow = tuple[str, datetime, datetime]
NumberRow = tuple[str, Decimal, Decimal, Decimal]
QuantityRow = tuple[str, Decimal, Decimal, Decimal, str | None, str | None, str | None,
                    str | None, Decimal | None, Decimal | None, Decimal | None]
UriRow = tuple[str, str]
ReferenceRow = tuple[str | None, str | None, str | None, str | None]
TextRow = tuple[str, str]
ConceptRow = tuple[str, str | None, str | None, str | None]

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
    text: list[TextRow] = field(default_factory=list)
    """`_text` (the narrative) and `_content` (every string value), normalised like strings."""
    concept: list[ConceptRow] = field(default_factory=list)
    """Concepts of a CodeSystem with their ancestors (see migration 0002)."""


CONTAINED_TABLES = ("string", "token", "date", "number", "quantity", "uri", "reference")
"""The tables `_contained` searches read; full text and concepts stay the container's own."""


NOT_FULL_TEXT_INDEXED = frozenset({"AuditEvent"})
"""Types without `_text`/`_content` rows: an AuditEvent comes with every interaction, is written by the server
from fixed codes, and is found by its own parameters (entity, agent, date, ...); its full text cost a quarter
of storing it (`python bench/cpu.py --audit-overhead`)."""


def contained_type(resource_type: str) -> str:
    """The resource_type of a contained resource's index rows: distinct from the type's own rows, so that a
    search of the type (always filtered on resource_type) never sees them, at no cost."""
    return "#" + resource_type


def storage_rows(resource: dict[str, Any], base_url: str | None = None) -> dict[str, list[tuple]]:
    """The index rows of `resource` per table as the storage layer writes them: its own rows, then the rows
    of each contained resource padded to every column and followed by their resource_type
    (`contained_type`) and contained id. A contained resource also gets an `_id` token row: it lists the
    contained resources a `_contained` search ranges over."""
    own = extract_index(resource, base_url)
    tables = {table: list(getattr(own, table)) for table in INDEX_COLUMNS}
    for contained in resource.get("contained") or []:
        if not (isinstance(contained, dict) and isinstance(contained.get("id"), str)
                and isinstance(contained.get("resourceType"), str)):
            continue
        found = extract_index(contained, base_url)
        found.token.append(("_id", None, contained["id"], None))
        marker = (contained_type(contained["resourceType"]), contained["id"])
        for table in CONTAINED_TABLES:
            width = len(INDEX_COLUMNS[table])
            tables[table] += [(*row, *(None,) * (width - len(row)), *marker) for row in getattr(found, table)]
    return tables


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
            _references(rows, parameter.code, values, local_prefix)
        elif parameter.type == "composite":
            _composites(rows, parameter, values, resource, local_prefix)
        else:
            _ADD[parameter.type](rows, parameter.code, values)
    if resource.get("resourceType") not in NOT_FULL_TEXT_INDEXED:
        _full_text(rows, resource)
    _concepts(rows, resource)
    covered = {row[1:4] for row in rows["reference"]}
    for reference in _all_references(resource):
        target = _target(reference, local_prefix)
        if target is not None and target not in covered:
            covered.add(target)
            rows["reference"][(None, *target)] = None
    # String rows are already cut to STRING_INDEX_LENGTH where indexed (value_exact is not indexed);
    # full text has no B-tree index.
    return IndexRows(**{table: list(found) if table in ("string", "text") else [_bounded(row) for row in found]
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


def _strings(rows: dict, code: str, values: list[Any]) -> None:
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
                found[(code, normalize_string(text), text)] = None


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


def _tokens(rows: dict, code: str, values: list[Any]) -> None:
    found = rows["token"]
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
        if isinstance(identifier_type, dict):
            # `:of-type` searches type-system|type-code|value: the type's coding in system, and its code
            # and the value joined by `|` in code, so one B-tree lookup finds it.
            for coding in identifier_type.get("coding") or []:
                if isinstance(coding, dict) and coding.get("code"):
                    found[(code + ":of-type", coding.get("system"), f"{coding['code']}|{value['value']}",
                           None)] = None


def _normalized(text: Any) -> str | None:
    return normalize_string(text) if isinstance(text, str) else None


def _dates(rows: dict, code: str, values: list[Any]) -> None:
    found = rows["date"]
    for value in values:
        if isinstance(value, str):
            bounds = _date_bounds(value)
            if bounds:
                found[(code, *bounds)] = None
        elif isinstance(value, dict):
            if "start" in value or "end" in value:  # Period; a missing bound is open
                start = _date_bounds(value.get("start")) if value.get("start") else (FAR_PAST, FAR_PAST)
                end = _date_bounds(value.get("end")) if value.get("end") else (FAR_FUTURE, FAR_FUTURE)
                if start and end:
                    found[(code, start[0], end[1])] = None
            elif "event" in value:  # Timing
                for event in value["event"]:
                    bounds = _date_bounds(event)
                    if bounds:
                        found[(code, *bounds)] = None


def _date_bounds(value: Any) -> tuple[datetime, datetime] | None:
    try:
        return date_range(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _numbers(rows: dict, code: str, values: list[Any]) -> None:
    found = rows["number"]
    for value in values:
        if isinstance(value, dict):
            value = value.get("value")
        try:
            number = decimal_of(value)
        except ValueError:
            continue
        found[(code, number, *number_range(number))] = None


def _quantities(rows: dict, code: str, values: list[Any]) -> None:
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
            system, unit_code = unit_source.get("system"), unit_source.get("code")
            bounds = (point, low_value if low_value is not None else point,
                      high_value if high_value is not None else point)
            found[(code, *bounds, system, unit_code, unit_source.get("unit"),
                   *_canonical(system, unit_code, bounds))] = None
            continue
        try:
            number = decimal_of(value.get("value"))
        except ValueError:
            continue
        if "currency" in value:  # Money
            system, unit_code, unit = ISO_4217, value["currency"], value["currency"]
        else:
            system, unit_code, unit = value.get("system"), value.get("code"), value.get("unit")
        bounds = (number, *number_range(number))
        found[(code, *bounds, system, unit_code, unit, *_canonical(system, unit_code, bounds))] = None


def _canonical(system: Any, unit_code: Any, bounds: tuple[Decimal, Decimal, Decimal]) -> tuple:
    """(canonical unit, value, low, high) of a UCUM quantity the conversion table knows, else Nones."""
    conversion = ucum_canonical(unit_code) if system == UCUM and isinstance(unit_code, str) else None
    if conversion is None:
        return None, None, None, None
    factor, unit = conversion
    return (unit, *(bound * factor for bound in bounds))


def _uris(rows: dict, code: str, values: list[Any]) -> None:
    found = rows["uri"]
    for value in values:
        if isinstance(value, str):
            found[(code, value)] = None


def _references(rows: dict, code: str, values: list[Any], local_prefix: str | None) -> None:
    found = rows["reference"]
    for value in values:
        if isinstance(value, dict):
            identifier = value.get("identifier")
            if isinstance(identifier, dict) and "value" in identifier:  # for `:identifier`
                rows["token"][(code + ":identifier", identifier.get("system"), str(identifier["value"]),
                               None)] = None
            value = value.get("reference")
        if isinstance(value, str):  # a Reference, or a canonical URL
            target = _target(value, local_prefix)
            if target is not None:
                found[(code, *target)] = None


def _composites(rows: dict, parameter: SearchParameter, elements: list[Any], resource: dict[str, Any],
                local_prefix: str | None) -> None:
    """Component rows `<code>$<n>` keyed by element, for every element where each component has a value."""
    element_key = 0
    for element in elements:
        if not isinstance(element, dict):
            continue
        parts: list[tuple[str, list[tuple]]] = []
        for position, component in enumerate(parameter.components):
            values = component.evaluate(element, resource)
            table = component.type
            found: dict[str, dict[tuple, None]] = {table: {}, "token": {}}
            if table == "reference":
                _references(found, f"{parameter.code}${position}", values, local_prefix)
            else:
                _ADD[table](found, f"{parameter.code}${position}", values)
            if not found[table]:
                break
            parts.append((table, list(found[table])))
        else:
            for table, component_rows in parts:
                for row in component_rows:
                    rows[table][(*row, element_key)] = None
            element_key += 1


_TAG = re.compile(r"<[^>]*>")


def _full_text(rows: dict, resource: dict[str, Any]) -> None:
    """`_text`: the narrative without its markup; `_content`: every string value of the resource."""
    narrative = resource.get("text")
    if isinstance(narrative, dict) and isinstance(narrative.get("div"), str):
        text = html.unescape(_TAG.sub(" ", narrative["div"]))
        if text.strip():
            rows["text"][("_text", _plain(text))] = None
    strings: list[str] = []
    stack: list[Any] = [{key: value for key, value in resource.items()
                         if key not in ("resourceType", "id", "meta", "text")}]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str) and not item.startswith(("http://", "https://", "urn:")):
            strings.append(item)
    if strings:
        rows["text"][("_content", _plain(" ".join(strings)))] = None


def _plain(text: str) -> str:
    """Text as full-text search compares it: lower case, without accents, whitespace collapsed."""
    return normalize_string(" ".join(text.split()), limit=None)


def _concepts(rows: dict, resource: dict[str, Any]) -> None:
    """A CodeSystem's concepts with their ancestors, for `:below` / `:above` (value sets are expanded when
    searched: search/value_sets.py)."""
    url = resource.get("url")
    if resource.get("resourceType") != "CodeSystem" or not isinstance(url, str) or resource.get("status") == "retired":
        return
    found = rows["concept"]
    stack: list[tuple[Any, tuple[str, ...]]] = [(concept, ()) for concept in resource.get("concept") or []]
    while stack:
        concept, ancestors = stack.pop()
        code = concept.get("code") if isinstance(concept, dict) else None
        if not isinstance(code, str):
            continue
        for ancestor in (code, *ancestors):
            found[(url, url, code, ancestor)] = None
        stack.extend((child, (code, *ancestors)) for child in concept.get("concept") or [])


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
