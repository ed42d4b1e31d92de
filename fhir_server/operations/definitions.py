"""The OperationDefinitions this server implements, kept as FHIR JSON under resources/operations/."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from fhir_server.paths import RESOURCES_DIR

OPERATIONS_DIR = RESOURCES_DIR / "operations"
LEVELS = ("system", "type", "instance")


def _primitive(parameter: dict[str, Any]) -> bool:
    """FHIR's primitive types are the ones spelled in lower case (boolean, code, dateTime, ...)."""
    kind = parameter.get("type") or ""
    return kind[:1].islower() and not parameter.get("part")


@dataclass(frozen=True, slots=True)
class OperationDefinition:
    """What the router needs of one OperationDefinition: where it may be invoked and with which methods."""

    id: str
    url: str
    code: str
    affects_state: bool
    levels: frozenset[str]
    resource_types: frozenset[str] | None
    """None: any resource type (`resource` absent, or "Resource")."""
    inputs: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, resource: dict[str, Any]) -> "OperationDefinition":
        types = frozenset(resource.get("resource") or ())
        return cls(resource["id"], resource["url"], resource["code"], bool(resource.get("affectsState")),
                   frozenset(level for level in LEVELS if resource.get(level)),
                   None if not types or "Resource" in types else types,
                   tuple(parameter for parameter in resource.get("parameter") or () if parameter["use"] == "in"))

    def offered_on(self, resource_type: str) -> bool:
        return self.resource_types is None or resource_type in self.resource_types

    def complex_inputs(self, level: str) -> list[str]:
        """The input parameters that a query string cannot carry. On an instance, a parameter typed as the
        resource itself is the instance (Patient/[id]/$match matches the stored Patient)."""
        own_types = {"Resource", *(self.resource_types or ())}
        return [parameter["name"] for parameter in self.inputs if not _primitive(parameter)
                and not (level == "instance" and parameter.get("type") in own_types)]

    def methods(self, level: str) -> tuple[str, ...]:
        """FHIR R4 operations.html: POST always; GET too when the operation changes nothing and every input
        parameter is primitive."""
        return ("POST",) if self.affects_state or self.complex_inputs(level) else ("GET", "POST")


@lru_cache(maxsize=None)
def operation_definition(id: str) -> OperationDefinition:
    """The OperationDefinition in resources/operations/`id`.json."""
    return OperationDefinition.of(orjson.loads((OPERATIONS_DIR / f"{id}.json").read_bytes()))
