"""`_include` and `_revinclude` (with `*`, `:iterate` and typed targets): the resources a page brings along,
found set-based over the reference table, one query per round for the whole page."""

from dataclasses import dataclass, replace
from typing import Any

import psycopg

from fhir_server.errors import FHIRError
from fhir_server.resource_types import resource_types
from fhir_server.search.canonical import canonical_types, named_by, texts
from fhir_server.search.parameters import parameters_for

INCLUDE = "_include"
REVINCLUDE = "_revinclude"
ITERATE_MODIFIERS = frozenset({"iterate", "recurse"})  # `recurse` is the STU3 name, still sent by clients
ANY = "*"
MAX_INCLUDED = 1_000
"""Included resources per page at most; more are left out and the Bundle says so."""
MAX_ROUNDS = 5
"""Rounds of `:iterate` at most (the first round included)."""


@dataclass(frozen=True, slots=True)
class Include:
    """One `_include` (forward) or `_revinclude`: `source_type:param[:target_type]`, `*` for any."""

    reverse: bool
    iterate: bool
    source_type: str
    param: str
    target_type: str


@dataclass(slots=True)
class Included:
    rows: list[tuple[int, str, str, bytes]]
    """(resource.id, type, fhir_id, content) in the order found."""
    limit: int
    capped: bool
    """More resources were to be included than `limit`."""
    unfinished: bool
    """`:iterate` still found new resources after MAX_ROUNDS."""


def parse_include(name: str, value: str) -> Include:
    """An `_include[:iterate]` / `_revinclude[:iterate]` value; a 400 for a malformed or unknown one."""
    base, _, modifier = name.partition(":")
    if modifier and modifier not in ITERATE_MODIFIERS:
        raise _invalid(name, value, f"unknown modifier ':{modifier}'")
    if value == ANY:
        return Include(base == REVINCLUDE, bool(modifier), ANY, ANY, "")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise _invalid(name, value, "expected SourceType:parameter[:TargetType]")
    source_type, param = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else ""
    known = resource_types()
    if source_type not in known:
        raise _invalid(name, value, f"'{source_type}' is not a resource type")
    if target_type and target_type not in known:
        raise _invalid(name, value, f"'{target_type}' is not a resource type")
    if param != ANY:
        parameter = parameters_for(source_type).get(param)
        if parameter is None or parameter.type != "reference":
            raise _invalid(name, value, f"'{param}' is not a reference search parameter of {source_type}")
        if target_type and parameter.targets and target_type not in parameter.targets:
            raise _invalid(name, value, f"{source_type}:{param} never refers to {target_type}")
    return Include(base == REVINCLUDE, bool(modifier), source_type, param, target_type)


def _invalid(name: str, value: str, reason: str) -> FHIRError:
    return FHIRError.of(400, "invalid", f"Invalid {name}={value}: {reason}", name)


# A reference row of the reference table matches an Include when its source type, parameter and target
# type agree; `*` (or an empty target type) matches anything, but `*` only covers references that some
# search parameter indexes (param IS NOT NULL), as R4 defines it. A canonical reference's target type is the
# type of the resource that its URL names (`u`): its Include is spelt out per such type (`_canonical`).
_SOURCE_MATCHES = ("(i.source_type = '*' OR s.resource_type = i.source_type) "
                   "AND (s.param = i.param OR (i.param = '*' AND s.param IS NOT NULL))")
_MATCHES = f"{_SOURCE_MATCHES} AND (i.target_type = '' OR s.target_type = i.target_type)"
_SPECS = "unnest(%s::text[], %s::text[], %s::text[]) AS i(source_type, param, target_type)"
# Each round is one statement: the targets of the sources' references, and the resources whose references
# point at the sources, by literal reference or by canonical URL (only the branches the round needs);
# each found once, never one already in the Bundle, in resource.id order so that capping is deterministic.
_TARGETS = f"""SELECT t.id FROM search_reference s JOIN {_SPECS} ON {_MATCHES}
    JOIN resource t ON t.resource_type = s.target_type AND t.fhir_id = s.target_id
    WHERE s.resource_id = ANY(%s) AND s.target_url IS NULL"""
_CANONICAL_TARGETS = f"""SELECT u.resource_id FROM search_reference s JOIN {_SPECS} ON {_SOURCE_MATCHES}
    JOIN search_uri u ON u.resource_type = i.target_type AND {named_by("s", "u")}
    WHERE s.resource_id = ANY(%s) AND s.target_url IS NOT NULL"""
_REFERRERS = f"""SELECT s.resource_id FROM search_reference s JOIN {_SPECS} ON {_MATCHES}
    JOIN unnest(%s::text[], %s::text[]) AS p(resource_type, fhir_id)
      ON s.target_type = p.resource_type AND s.target_id = p.fhir_id
    WHERE s.target_url IS NULL"""
# The sources' canonical URLs first become an array, so that the references naming them are looked up in
# search_reference_url whatever the planner thinks of the join.
_CANONICAL_REFERRERS = f"""SELECT s.resource_id FROM search_reference s
    JOIN search_uri u ON u.resource_id = ANY(%s) AND u.param = 'url' AND s.target_url = ANY({texts("u")})
    JOIN {_SPECS} ON i.target_type = u.resource_type AND {_SOURCE_MATCHES}
    WHERE s.target_url IS NOT NULL AND s.target_url = ANY(ARRAY(SELECT unnest({texts("n")}) FROM search_uri n
                                                              WHERE n.resource_id = ANY(%s) AND n.param = 'url'))"""
# The ids become an array, so each resource is then read by its key (a join could walk the whole table in order).
_ROUND_SQL = """
WITH found (id) AS ({branches})
SELECT r.id, r.resource_type, r.fhir_id, r.content FROM resource r
WHERE r.id = ANY(ARRAY(SELECT id FROM found WHERE id <> ALL(%s) ORDER BY id LIMIT %s)) AND NOT r.deleted
ORDER BY r.id
"""


def _spec_arrays(includes: list[Include]) -> list[list[str]]:
    return [[i.source_type for i in includes], [i.param for i in includes], [i.target_type for i in includes]]


def _canonical(includes: list[Include]) -> list[Include]:
    """`includes` once per type that their references may name by canonical URL."""
    spelt = []
    for i in includes:
        parameter = parameters_for(i.source_type).get(i.param) if i.param != ANY else None
        candidates = [i.target_type] if i.target_type else (parameter.targets if parameter else ()) or None
        spelt += [replace(i, target_type=target_type) for target_type in canonical_types(candidates)]
    return spelt


async def included(conn: psycopg.AsyncConnection, matches: list[tuple[int, str, str]],
                   includes: list[Include], limit: int | None = None) -> Included:
    """The resources `includes` bring along for the page `matches` ((resource.id, type, fhir_id) each).

    Round one follows every Include from the matches; each further round follows the `:iterate` ones
    from what the round before added, until nothing new turns up, `limit` is reached or MAX_ROUNDS pass.
    """
    limit = MAX_INCLUDED if limit is None else limit
    result = Included([], limit, False, False)
    seen = [resource_id for resource_id, _, _ in matches]
    sources = matches
    active = includes
    for _ in range(MAX_ROUNDS):
        forward = [i for i in active if not i.reverse]
        reverse = [i for i in active if i.reverse]
        room = limit - len(result.rows)
        ids = [source[0] for source in sources]
        branches: list[tuple[str, list[Any]]] = []
        if forward:
            branches.append((_TARGETS, [*_spec_arrays(forward), ids]))
        if canonical := _canonical(forward):
            branches.append((_CANONICAL_TARGETS, [*_spec_arrays(canonical), ids]))
        if reverse:
            branches.append((_REFERRERS, [*_spec_arrays(reverse), [source[1] for source in sources],
                                          [source[2] for source in sources]]))
        canonical = _canonical(reverse)
        named_types = {i.target_type for i in canonical}
        if named := [source[0] for source in sources if source[1] in named_types]:
            branches.append((_CANONICAL_REFERRERS, [named, *_spec_arrays(canonical), named]))
        sql = _ROUND_SQL.format(branches="\n  UNION\n    ".join(branch for branch, _ in branches))
        cursor = await conn.execute(sql, [*(arg for _, args in branches for arg in args), seen, room + 1])
        found = await cursor.fetchall()
        if len(found) > room:
            result.capped = True
            found = found[:room]
        result.rows.extend(found)
        if result.capped or not found:
            return result
        active = [i for i in includes if i.iterate]
        if not active:
            return result
        seen.extend(row[0] for row in found)
        sources = [(row[0], row[1], row[2]) for row in found]
    result.unfinished = True
    return result
