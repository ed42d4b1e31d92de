"""Authorization of every interaction, in one place: the token's grants against what the request needs.

`authorize` runs for each HTTP request and for each Bundle entry (the router calls it). Requests that
need a patient compartment check carry `req.principal.patient`; instance-level checks answer 404, not
403, so that a resource outside the caller's compartment is indistinguishable from a missing one.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import AsyncConnection

from fhir_server.auth.scopes import AUDIT_TYPES, Grant, matching_grants, parse_scopes
from fhir_server.errors import FHIRError, Issue
from fhir_server.resource_types import resource_types
from fhir_server.search.compartment import compartment_condition
from fhir_server.search.engine import find_matches

if TYPE_CHECKING:
    from fhir_server.auth.tokens import AccessToken

# Operations and the permission each needs on the request's resource type. $merge and $unmerge check
# further in their handlers (`authorize_changes`): a preview only reads, a merge writes many types.
OPERATION_PERMISSIONS = {"validate": "r", "match": "s", "everything": "r", "merge": "r", "unmerge": "u",
                         "reindex": "u", "download": "r", "render": "r", "send-bulk": "c",
                         "semantic-search": "s"}

HIDDEN_FROM_PATIENTS = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "NOPAT")
"""The security label (meta.security) of what patient/ scopes never see, e.g. staff-only notes in a
message thread: searches, reads, included resources and $everything leave such resources out."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and what their token grants."""

    token: "AccessToken"
    grants: tuple[Grant, ...]

    @classmethod
    def of(cls, token: "AccessToken") -> "Principal":
        return cls(token, parse_scopes(token.scopes))

    def restriction(self, resource_type: str | None, permission: str) -> str | None:
        """The patient id the request is confined to, or None when a user/system grant covers it."""
        grants = matching_grants(self.grants, resource_type, permission)
        if not grants:
            raise FHIRError.of(403, "forbidden", f"The token's scopes do not allow '{permission}' on "
                                                 f"{resource_type or 'all resource types'}")
        if any(grant.context != "patient" for grant in grants):
            return None
        if not self.token.patient:
            raise FHIRError.of(403, "forbidden", "patient/ scopes need a patient in the launch context")
        return self.token.patient


    def filters(self, resource_type: str | None, permission: str) -> tuple[tuple[str, str], ...]:
        """The v2 scope query the request must also satisfy (`patient/Observation.rs?category=...`).

        A grant without a query lifts the filter; two different queries cannot be combined with AND
        (they mean OR), so that case is refused rather than answered wrongly.
        """
        grants = matching_grants(self.grants, resource_type, permission)
        if any(not grant.filters for grant in grants):
            return ()
        distinct = {grant.filters for grant in grants}
        if len(distinct) > 1:
            raise FHIRError.of(403, "forbidden", "Several scopes with different search filters cover this request; "
                                                 "combining them is not supported")
        return distinct.pop()

    def readable_types(self) -> frozenset[str] | None:
        """Types the caller may read or search (for included resources); None = every type."""
        readable = [grant for grant in self.grants if grant.permissions & {"r", "s"}]
        named = frozenset(grant.resource_type for grant in readable)
        if "*" not in named:
            return named
        if self.may_read_audit():
            return None
        return frozenset(resource_types()) - AUDIT_TYPES

    def may_read_audit(self) -> bool:
        """Whether a scope names the audit trail (wildcards do not grant it)."""
        return all(matching_grants(self.grants, kind, "r") for kind in AUDIT_TYPES)


def permission_for(method: str, kind: str, operation: str | None) -> str:
    """The SMART v2 permission letter an interaction needs."""
    if operation is not None:
        return OPERATION_PERMISSIONS.get(operation, "c")
    return {"read": "r", "vread": "r", "history-instance": "r", "search": "s", "history": "s",
            "create": "c", "update": "u", "patch": "u", "delete": "d"}[kind]


async def authorize_changes(conn: AsyncConnection, principal: Principal | None, permission: str,
                            resources: dict[str, list[str]], action: str) -> None:
    """403 unless the caller's user/ or system/ scopes allow `permission` on every resource of `resources`
    (type -> ids), filters of v2 scopes included; the issues name each type (or resource) refused.

    For operations that change several patients' records at once (a merge): patient/ scopes, confined to
    one patient's compartment, never suffice. `action` says what the operation would do to them ("rewrite").
    """
    if principal is None:
        return
    issues = []
    for resource_type, ids in sorted(resources.items()):
        grants = [grant for grant in matching_grants(principal.grants, resource_type, permission)
                  if grant.context != "patient"]
        if not grants:
            issues.append(Issue("forbidden", f"The token's user/ or system/ scopes do not allow '{permission}' on "
                                             f"{resource_type}, which the operation would {action} ({len(ids)} "
                                             "resource(s))", expression=(resource_type,)))
            continue
        if any(not grant.filters for grant in grants):
            continue
        filters = list(grants[0].filters) if len({grant.filters for grant in grants}) == 1 else None
        allowed = {fhir_id for _, fhir_id, _ in await find_matches(
            conn, resource_type, [("_id", ",".join(ids)), *filters], limit=len(ids))} if filters else set()
        issues += [Issue("forbidden", f"{resource_type}/{fhir_id} is outside what the token's '{permission}' scopes "
                                      f"on {resource_type} allow (their search filters), and the operation would "
                                      f"{action} it", expression=(f"{resource_type}/{fhir_id}",))
                   for fhir_id in sorted(set(ids) - allowed)]
    if issues:
        raise FHIRError(403, issues)


async def in_patient_compartment(conn: AsyncConnection, resource_type: str, fhir_id: str, patient: str) -> bool:
    """Whether the current version of the resource is in the patient's compartment (R4 definition), or is
    the patient."""
    try:
        sql, args = compartment_condition("Patient", patient, resource_type, with_itself=True)
    except FHIRError:
        return False  # a type that is never in the Patient compartment
    row = await (await conn.execute(
        f"SELECT 1 FROM resource r WHERE r.resource_type = %s AND r.fhir_id = %s AND NOT r.deleted AND {sql}",
        [resource_type, fhir_id, *args],
    )).fetchone()
    return row is not None


def not_found(resource_type: str, fhir_id: str) -> FHIRError:
    return FHIRError.of(404, "not-found", f"{resource_type}/{fhir_id} is not known")
