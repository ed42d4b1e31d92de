"""Compartments (R4 CompartmentDefinitions under `resources/`): which resources a `Patient/123/...` search covers."""

from functools import lru_cache
from typing import Any

import orjson

from fhir_server.errors import FHIRError
from fhir_server.paths import RESOURCES_DIR

COMPARTMENT_DEFINITIONS_FILE = RESOURCES_DIR / "compartment-definitions.json"
# A CompartmentDefinition's param for "the compartment resource itself" (Encounter in the Encounter compartment).
ITSELF = "{def}"


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

    `with_itself` counts the compartment's own resource in (authorization: a patient/ token reads its
    Patient, which R4 lists in the Patient compartment only by `link`).

    One probe of the reference table's (target_type, target_id) index, filtered to the
    (resource type, parameter) pairs the definition lists.
    """
    members = member_parameters(compartment_type, resource_type)
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
    sql = ("r.id IN (SELECT c.resource_id FROM search_reference c "
           "JOIN unnest(%s::text[], %s::text[]) AS m(resource_type, param) "
           "ON c.resource_type = m.resource_type AND c.param = m.param "
           "WHERE c.target_type = %s AND c.target_id = %s AND c.target_url IS NULL)")
    args: list[Any] = [types, params, compartment_type, compartment_id]
    if itself:
        sql = f"({sql} OR (r.resource_type = %s AND r.fhir_id = %s))"
        args += [compartment_type, compartment_id]
    if resource_type is None:
        sql += " AND r.resource_type = ANY(%s)"
        args.append(sorted(members))
    return sql, args
