"""Finding the Patient an operation parameter means: a Reference, or Identifiers that must match exactly one."""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.identity.references import local_target
from fhir_server.operations import parameters as params
from fhir_server.search.engine import find_matches


def _escape(value: str) -> str:
    """A token search value with FHIR's escapes, so `|`, `,` and `$` in an identifier match literally."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return value


def _identifier_query(identifier: Any, name: str) -> tuple[str, str]:
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        raise FHIRError.of(400, "invalid", f"{name} must be an Identifier with a value", name)
    system = identifier.get("system")
    return "identifier", (_escape(system) + "|" if isinstance(system, str) else "") + _escape(identifier["value"])


async def patient_id(conn: AsyncConnection, parameters: list[dict[str, Any]], name: str, base_url: str,
                     *, required: bool = True) -> str | None:
    """The id of the Patient given as `name` (a Reference) or `name`-identifier (one or more Identifiers).

    Identifiers must together match exactly one Patient, else 422; a missing input is 400 when required.
    """
    reference = params.value(params.one(parameters, name), "Reference")
    identifiers = [parameter.get("valueIdentifier") for parameter in parameters
                   if parameter.get("name") == f"{name}-identifier"]
    if reference is not None and identifiers:
        raise FHIRError.of(400, "invalid", f"Give {name} or {name}-identifier, not both", name)
    if reference is not None:
        target = local_target(reference.get("reference") or "", base_url) if isinstance(reference, dict) else None
        if target is None or target[0] != "Patient":
            raise FHIRError.of(400, "invalid", f"{name} must reference a Patient on this server (Patient/[id])", name)
        return target[1]
    if not identifiers:
        if required:
            raise FHIRError.of(400, "required", f"{name} or {name}-identifier is required", name)
        return None
    query = [_identifier_query(identifier, f"{name}-identifier") for identifier in identifiers]
    matches = await find_matches(conn, "Patient", query, limit=2)
    if len(matches) != 1:
        raise FHIRError.of(422, "not-found" if not matches else "multiple-matches",
                           f"{name}-identifier matches {'no' if not matches else 'more than one'} Patient; "
                           "it must match exactly one", f"{name}-identifier")
    return matches[0][1]
