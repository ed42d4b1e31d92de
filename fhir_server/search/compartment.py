"""Compartments (R4 CompartmentDefinitions under `resources/`): which resources a `Patient/123/...` search covers."""

from functools import lru_cache
from typing import Any

import orjson

from fhir_server.errors import FHIRError
from fhir_server.paths import RESOURCES_DIR

COMPARTMENT_DEFINITIONS_FILE = RESOURCES_DIR / "compartment-definitions.json"
# A CompartmentDefinition's param for "the compartment resource itself" (Encounter in the Encounter compartment).
ITSELF = "{def}"
BINARY = "Binary"


@lru_cache(maxsize=1)
def compartments() -> dict[str, dict[str, tuple[str, ...]]]:
    """Compartment type → member resource type → the reference parameters that put a resource in it."""
    document = orjson.loads(COMPARTMENT_DEFINITIONS_FILE.read_bytes())
    return {code: {member: tuple(params) for member, params in members.items()}
            for code, members in document["compartments"].items()}


def member_parameters(compartment_type: str, resource_type: str | None) -> dict[str, tuple[str, ...]]:
    """The members of the compartment searched (all, for `*`), with their parameters; 404 if there is none."""
    members = compartments().get(compartment_type)
    if members is None:
        raise FHIRError.of(404, "not-found", f"{compartment_type} is not a compartment; the compartments are "
                                             + ", ".join(sorted(compartments())))
    if resource_type is None:
        return members
    if resource_type not in members:
        raise FHIRError.of(404, "not-found", f"{resource_type} resources are never in the {compartment_type} "
                                             "compartment")
    return {resource_type: members[resource_type]}


def compartment_condition(compartment_type: str, compartment_id: str, resource_type: str | None,
                          with_itself: bool = False) -> tuple[str, list[Any]]:
    """SQL over `r` for "r is in the compartment `compartment_type/compartment_id`", and its arguments.

    `with_itself` gives the compartment as authorization sees it: the compartment's own resource counts in
    (a patient/ token reads its Patient, which R4 lists in the Patient compartment only by `link`), and so
    does a Binary whose securityContext is in it (R4 puts Binary in no compartment; its securityContext
    says whose it is).

    One probe of the reference table's (target_type, target_id) index, filtered to the
    (resource type, parameter) pairs the definition lists.
    """
    binaries = with_itself and resource_type in (None, BINARY)
    members = member_parameters(compartment_type, None if resource_type == BINARY and binaries else resource_type)
    if resource_type == BINARY:
        sql, args = _binaries(members, compartment_type, compartment_id)
    else:
        sql, args = _members("r", members, compartment_type, compartment_id, with_itself)
        if binaries:
            binary_sql, binary_args = _binaries(members, compartment_type, compartment_id)
            sql, args = f"({sql} OR {binary_sql})", args + binary_args
    if resource_type is None:
        sql += " AND r.resource_type = ANY(%s)"
        args.append(sorted([*members, BINARY] if binaries else members))
    return sql, args


def _members(alias: str, members: dict[str, tuple[str, ...]], compartment_type: str, compartment_id: str,
             with_itself: bool) -> tuple[str, list[Any]]:
    types, params = [], []
    itself = False
    for member, member_params in members.items():
        itself = itself or (with_itself and member == compartment_type)
        for param in member_params:
            if param == ITSELF:
                itself = itself or member == compartment_type
            else:
                types.append(member)
                params.append(param)
    sql = (f"{alias}.id IN (SELECT c.resource_id FROM search_reference c "
           "JOIN unnest(%s::text[], %s::text[]) AS m(resource_type, param) "
           "ON c.resource_type = m.resource_type AND c.param = m.param "
           "WHERE c.target_type = %s AND c.target_id = %s AND c.target_url IS NULL)")
    args: list[Any] = [types, params, compartment_type, compartment_id]
    if itself:
        sql = f"({sql} OR ({alias}.resource_type = %s AND {alias}.fhir_id = %s))"
        args += [compartment_type, compartment_id]
    return sql, args


def _binaries(members: dict[str, tuple[str, ...]], compartment_type: str, compartment_id: str
              ) -> tuple[str, list[Any]]:
    """Binaries whose securityContext (a Binary's only reference) is a live resource in the compartment."""
    target_sql, args = _members("t", members, compartment_type, compartment_id, with_itself=True)
    return ("r.id IN (SELECT b.resource_id FROM search_reference b JOIN resource t "
            "ON t.resource_type = b.target_type AND t.fhir_id = b.target_id "
            f"WHERE b.resource_type = 'Binary' AND b.target_url IS NULL AND NOT t.deleted AND {target_sql})"), args
