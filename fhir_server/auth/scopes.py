"""SMART scopes (v1 and v2) parsed into grants, and the check of one interaction against them."""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

# v1 `read`/`write`/`*` expressed as the v2 permission letters they stand for.
V1_PERMISSIONS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
V2_ORDER = "cruds"
SCOPE = re.compile(r"(patient|user|system)/([A-Za-z]+|\*)\.([A-Za-z*]+)(?:\?(.*))?")
AUDIT_TYPES = frozenset({"AuditEvent"})
"""The audit trail: granted only by a scope that names it (`system/AuditEvent.rs`, `user/AuditEvent.read`),
never by a wildcard such as `user/*.rs`."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one resource scope allows: `permissions` ⊆ {c, r, u, d, s} on `resource_type` ("*" = every type),
    in the `patient`, `user` or `system` context, limited to resources matching `filters` (v2 queries)."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    filters: tuple[tuple[str, str], ...] = ()

    def covers(self, resource_type: str | None, permission: str) -> bool:
        if permission not in self.permissions:
            return False
        return self.resource_type == resource_type or (self.resource_type == "*" and resource_type not in AUDIT_TYPES)


def _permissions(text: str) -> frozenset[str] | None:
    if text in V1_PERMISSIONS:
        return V1_PERMISSIONS[text]
    # v2 letters must be a non-empty subsequence of "cruds", in that order.
    position = 0
    for letter in text:
        position = V2_ORDER.find(letter, position) + 1
        if position == 0:
            return None
    return frozenset(text) if text else None


def parse_scopes(scopes: Iterable[str]) -> tuple[Grant, ...]:
    """The resource grants among `scopes`; launch, openid, fhirUser, offline_access etc. grant no resources."""
    grants = []
    for scope in scopes:
        match = SCOPE.fullmatch(scope)
        if match is None:
            continue
        context, resource_type, letters, query = match.groups()
        permissions = _permissions(letters)
        if permissions is None:
            continue
        grants.append(Grant(context, resource_type, permissions, tuple(parse_qsl(query or ""))))
    return tuple(grants)


def matching_grants(grants: tuple[Grant, ...], resource_type: str | None, permission: str) -> list[Grant]:
    return [grant for grant in grants if grant.covers(resource_type, permission)]
