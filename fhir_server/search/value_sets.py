"""ValueSet expansion for `:in` / `:not-in`: the compose of stored ValueSets over stored CodeSystems, cached."""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from fhir_server.errors import FHIRError
from fhir_server.search import terminology

Code = tuple[str | None, str]
"""(system, code)."""

_MAX_CACHED = 256
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Members:
    """`codes`, plus every code of `systems` except `excluded`: a whole system whose CodeSystem is not
    held stays a rule rather than a list, so excludes and intersections keep exact meaning."""

    codes: frozenset[Code] = frozenset()
    systems: frozenset[str] = frozenset()
    excluded: frozenset[Code] = frozenset()

    def contains(self, code: Code) -> bool:
        return code in self.codes or (code[0] in self.systems and code not in self.excluded)

    def union(self, other: "Members") -> "Members":
        excluded = {code for code in self.excluded | other.excluded
                    if not self.contains(code) and not other.contains(code)}
        return Members(self.codes | other.codes, self.systems | other.systems, frozenset(excluded))

    def intersection(self, other: "Members") -> "Members":
        systems = self.systems & other.systems
        codes = {code for code in self.codes | other.codes if self.contains(code) and other.contains(code)}
        excluded = {code for code in self.excluded | other.excluded if code[0] in systems}
        return Members(frozenset(codes), systems, frozenset(excluded))

    def minus(self, other: "Members") -> "Members":
        systems = self.systems - other.systems
        both = self.systems & other.systems
        codes = {code for code in self.codes if not other.contains(code)}
        codes |= {code for code in other.excluded if code[0] in both and self.contains(code)}
        excluded = {code for code in self.excluded | other.codes if code[0] in systems}
        return Members(frozenset(codes), systems, frozenset(excluded))


@dataclass(frozen=True, slots=True)
class Part:
    """Stands for one array of a value set's expansion among a condition's arguments, until `resolve`."""

    parameter: str
    url: str
    name: str
    """'systems' and 'codes' (parallel), 'bare' (codes alone), 'whole', 'excluded_systems', 'excluded_codes'."""


def membership_sql(s: str, parameter: str, url: str) -> tuple[str, list[Part]]:
    """SQL true when token row `s` is a member of the value set `url`: a row without a system (a `code`
    element) is a member when its code is."""
    parts = [Part(parameter, url, name) for name in
             ("systems", "codes", "bare", "whole", "excluded_systems", "excluded_codes")]
    return (f"(({s}.system, {s}.code) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
            f"OR ({s}.system IS NULL AND {s}.code = ANY(%s::text[])) "
            f"OR ({s}.system = ANY(%s::text[]) AND ({s}.system, {s}.code) NOT IN "
            f"(SELECT * FROM unnest(%s::text[], %s::text[]))))"), parts


async def resolve(conn: psycopg.AsyncConnection, args: list[Any]) -> None:
    """Replace every `Part` in `args` with its array; a value set that is not known is a 400."""
    if not any(isinstance(arg, Part) for arg in args):
        return
    stamp = await _stamp(conn)
    for index, arg in enumerate(args):
        if isinstance(arg, Part):
            args[index] = _arrays(await _cached(conn, stamp, arg))[arg.name]


def _arrays(members: Members) -> dict[str, list[str]]:
    codes = sorted(code for code in members.codes if code[0] is not None)
    excluded = sorted(code for code in members.excluded if code[0] is not None)
    return {"systems": [system for system, _ in codes], "codes": [code for _, code in codes],
            "bare": sorted({code for _, code in members.codes}), "whole": sorted(members.systems),
            "excluded_systems": [system for system, _ in excluded], "excluded_codes": [code for _, code in excluded]}


Stamp = tuple[str | None, datetime | None, int]

# Expansions per process, valid while no ValueSet or CodeSystem changes in the schema (tenant) searched:
# `_stamp` is read per search.
_cache: dict[str, Members] = {}
_cache_stamp: Stamp | None = None


async def _stamp(conn: psycopg.AsyncConnection) -> Stamp:
    cursor = await conn.execute("SELECT current_schema(), max(last_updated), count(*) FROM resource "
                                "WHERE resource_type IN ('ValueSet', 'CodeSystem')")
    row = await cursor.fetchone()
    return (row[0], row[1], int(row[2])) if row else (None, None, 0)


async def _cached(conn: psycopg.AsyncConnection, stamp: Stamp, part: Part) -> Members:
    global _cache_stamp
    if stamp != _cache_stamp or len(_cache) > _MAX_CACHED:
        _cache.clear()
        _cache_stamp = stamp
    members = _cache.get(part.url)
    if members is None:
        members = await expand(conn, part.url, parameter=part.parameter)
        _cache[part.url] = members
    return members


async def expand(conn: psycopg.AsyncConnection, url: str, *, parameter: str, seen: tuple[str, ...] = ()
                 ) -> Members:
    """The members of the value set `url` (`url|version` picks a version): a stored ValueSet, else a
    vendored R4 expansion; neither is a 400 naming `parameter`."""
    if url in seen or len(seen) > _MAX_DEPTH:
        raise _error(parameter, f"the value set '{url}' includes itself")
    value_set = await _canonical(conn, "ValueSet", url)
    if value_set is None:
        systems, codes = terminology.vendored_members(url)
        if not codes:
            raise _error(parameter, f"the value set '{url}' is not known to this server", "not-found")
        return Members(frozenset(zip(systems, codes)))
    compose = value_set.get("compose")
    if not isinstance(compose, dict):
        return Members(frozenset(_expansion_codes(value_set)))
    seen = (*seen, url)
    included = Members()
    for item in _items(compose.get("include")):
        included = included.union(await _include(conn, item, parameter, seen))
    for item in _items(compose.get("exclude")):
        included = included.minus(await _include(conn, item, parameter, seen))
    return included


def _error(parameter: str, message: str, code: str = "invalid") -> FHIRError:
    return FHIRError.of(400, code, f"Invalid search parameter '{parameter}': {message}", parameter)


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _expansion_codes(value_set: dict[str, Any]) -> set[Code]:
    found: set[Code] = set()
    contains = list(_items((value_set.get("expansion") or {}).get("contains")))
    while contains:
        item = contains.pop()
        if isinstance(item.get("code"), str):
            found.add((item.get("system"), item["code"]))
        contains.extend(_items(item.get("contains")))
    return found


async def _include(conn: psycopg.AsyncConnection, item: dict[str, Any], parameter: str, seen: tuple[str, ...]
                   ) -> Members:
    """One `compose.include` (or `exclude`): its system part and every value set it names, intersected."""
    parts: list[Members] = []
    system = item.get("system")
    if isinstance(system, str):
        concepts = [concept["code"] for concept in _items(item.get("concept")) if isinstance(concept.get("code"), str)]
        filters = _items(item.get("filter"))
        if concepts:
            parts.append(Members(frozenset((system, code) for code in concepts)))
        elif filters:
            code_system = await _code_system(conn, system)
            if code_system is None:
                raise _error(parameter, f"the filters on '{system}' need its CodeSystem, which this server does "
                                        "not hold", "not-supported")
            selected = set(code_system.codes)
            for each in filters:
                selected &= code_system.filter(each, parameter)
            parts.append(Members(frozenset((system, code) for code in selected)))
        else:
            code_system = await _code_system(conn, system)
            parts.append(Members(frozenset((system, code) for code in code_system.codes)) if code_system
                         else Members(systems=frozenset({system})))
    for url in item.get("valueSet") or []:
        if isinstance(url, str):
            parts.append(await expand(conn, url, parameter=parameter, seen=seen))
    if not parts:
        return Members()
    result = parts[0]
    for other in parts[1:]:
        result = result.intersection(other)
    return result


@dataclass(slots=True)
class _CodeSystem:
    """A stored CodeSystem's concepts: hierarchy from nesting (and `parent` properties), property values."""

    codes: dict[str, dict[str, list[str]]]
    """code → property code → values as text."""
    parents: dict[str, set[str]]

    def descendants(self, code: str) -> set[str]:
        children: dict[str, set[str]] = {}
        for child, parents in self.parents.items():
            for parent in parents:
                children.setdefault(parent, set()).add(child)
        found, stack = set(), [code]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found

    def ancestors(self, code: str) -> set[str]:
        found, stack = set(), [code]
        while stack:
            for parent in self.parents.get(stack.pop(), ()):
                if parent not in found:
                    found.add(parent)
                    stack.append(parent)
        return found

    def filter(self, item: dict[str, Any], parameter: str) -> set[str]:
        """The codes a `compose.include.filter` selects (R4 filter-operator)."""
        prop, op, value = item.get("property"), item.get("op"), item.get("value")
        if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
            raise _error(parameter, "a value set filter needs property, op and value")
        on_code = prop in ("concept", "code")
        if on_code and op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
            below = self.descendants(value) if value in self.codes else set()
            if op == "is-a":
                return below | ({value} & self.codes.keys())
            if op == "descendent-of":
                return below
            if op == "is-not-a":
                return set(self.codes) - below - {value}
            return (self.ancestors(value) | {value}) & self.codes.keys()
        values = {code: ([code] if on_code else properties.get(prop, [])) for code, properties in self.codes.items()}
        if op == "=":
            return {code for code, found in values.items() if value in found}
        if op in ("in", "not-in"):
            wanted = {each.strip() for each in value.split(",")}
            selected = {code for code, found in values.items() if wanted & set(found)}
            return selected if op == "in" else set(self.codes) - selected
        if op == "regex":
            try:
                pattern = re.compile(value)
            except re.error:
                raise _error(parameter, f"the value set filter regex '{value}' is not valid") from None
            return {code for code, found in values.items() if any(pattern.fullmatch(each) for each in found)}
        if op == "exists":
            return {code for code, found in values.items() if bool(found) == (value == "true")}
        raise _error(parameter, f"the value set filter '{prop} {op}' is not supported", "not-supported")


async def _code_system(conn: psycopg.AsyncConnection, url: str) -> _CodeSystem | None:
    """The stored CodeSystem `url` with its concepts; None if not held or it lists no concepts."""
    resource = await _canonical(conn, "CodeSystem", url)
    if resource is None or not resource.get("concept"):
        return None
    codes: dict[str, dict[str, list[str]]] = {}
    parents: dict[str, set[str]] = {}
    stack: list[tuple[Any, str | None]] = [(concept, None) for concept in _items(resource.get("concept"))]
    while stack:
        concept, parent = stack.pop()
        code = concept.get("code")
        if not isinstance(code, str):
            continue
        properties = codes.setdefault(code, {})
        for prop in _items(concept.get("property")):
            value = next((v for key, v in prop.items() if key.startswith("value")), None)
            if isinstance(prop.get("code"), str) and value is not None:
                text = value.get("code") if isinstance(value, dict) else value
                text = str(text).lower() if isinstance(text, bool) else str(text)
                properties.setdefault(prop["code"], []).append(text)
                if prop["code"] == "parent":
                    parents.setdefault(code, set()).add(text)
        if parent is not None:
            parents.setdefault(code, set()).add(parent)
        stack.extend((child, code) for child in _items(concept.get("concept")))
    return _CodeSystem(codes, parents)


async def _canonical(conn: psycopg.AsyncConnection, resource_type: str, url: str) -> dict[str, Any] | None:
    """The current `resource_type` whose `url` is `url` (`url|version`: that version), newest first."""
    url, _, version = url.partition("|")
    cursor = await conn.execute(
        "SELECT r.content FROM search_uri u JOIN resource r ON r.id = u.resource_id WHERE u.resource_type = %s "
        "AND u.param = 'url' AND u.value = %s AND NOT r.deleted ORDER BY r.last_updated DESC",
        [resource_type, url])
    for (content,) in await cursor.fetchall():
        resource = orjson.loads(content)
        if not version or resource.get("version") == version:
            return resource
    return None
