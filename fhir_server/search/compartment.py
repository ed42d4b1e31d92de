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

    One probe of the reference table's (target_type, target_id) index, filtered to the (resource type,
    parameter) pairs the definition lists. The parts are one `r.id IN (... UNION ALL ...)`, never ORed
    conditions, so that a search across all types starts from the compartment rather than scanning.
    """
    binaries = with_itself and resource_type in (None, BINARY)
    members = member_parameters(compartment_type, None if resource_type == BINARY and binaries else resource_type)
    types, params, itself = _member_pairs(members, compartment_type)
    parts, args = [], []
    if resource_type != BINARY:
        parts.append(f"SELECT c.resource_id FROM {_MEMBER_REFERENCES} WHERE {_TARGET}")
        args += [types, params, compartment_type, compartment_id]
        if itself or (with_itself and compartment_type in members):
            parts.append("SELECT i.id FROM resource i WHERE i.resource_type = %s AND i.fhir_id = %s AND NOT i.deleted")
            args += [compartment_type, compartment_id]
    if binaries:
        # A Binary's only reference is its securityContext; found from the compartment's side (its resource and
        # members, then the references to them), so the cost follows the compartment, not the number of Binaries.
        parts.append("SELECT b.resource_id FROM search_reference b JOIN ("
                     "SELECT %s::text AS resource_type, %s::text AS fhir_id UNION ALL "
                     f"SELECT t.resource_type, t.fhir_id FROM {_MEMBER_REFERENCES} "
                     f"JOIN resource t ON t.id = c.resource_id WHERE {_TARGET}) AS owner "
                     "ON b.target_type = owner.resource_type AND b.target_id = owner.fhir_id "
                     "WHERE b.resource_type = 'Binary' AND b.target_url IS NULL")
        args += [compartment_type, compartment_id, types, params, compartment_type, compartment_id]
    sql = f"r.id IN ({' UNION ALL '.join(parts)})"
    if resource_type is None:
        sql += " AND r.resource_type = ANY(%s)"
        args.append(sorted([*members, BINARY] if binaries else members))
    return sql, args


# The reference rows (alias c) that put a resource in a compartment: its (type, parameter) pairs as two
# arrays, then the compartment's type and id.
_MEMBER_REFERENCES = ("search_reference c JOIN unnest(%s::text[], %s::text[]) AS m(resource_type, param) "
                      "ON c.resource_type = m.resource_type AND c.param = m.param")
_TARGET = "c.target_type = %s AND c.target_id = %s AND c.target_url IS NULL"


def _member_pairs(members: dict[str, tuple[str, ...]], compartment_type: str) -> tuple[list[str], list[str], bool]:
    """The (resource type, parameter) pairs, as two lists, and whether the definition lists the compartment's
    own resource (`{def}`)."""
    types, params = [], []
    itself = False
    for member, member_params in members.items():
        for param in member_params:
            if param == ITSELF:
                itself = itself or member == compartment_type
            else:
                types.append(member)
                params.append(param)
    return types, params, itself
