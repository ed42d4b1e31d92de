"""The search parameter registry: R4 SearchParameters from `resources/`, each expression compiled once per base type."""

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_server.paths import RESOURCES_DIR
from fhir_server.search.values import reference_target

log = logging.getLogger(__name__)

SEARCH_PARAMETERS_FILE = RESOURCES_DIR / "search-parameters.json"

# Parameter types with an index table; composite and special ones are not searchable here yet.
INDEXED_TYPES = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})
# Served from columns of the `resource` table rather than from index rows.
COLUMN_PARAMETERS = frozenset({"_id", "_lastUpdated"})
COMMON_BASES = ("Resource", "DomainResource")

Evaluate = Callable[[dict[str, Any]], list[Any]]

_R4 = models["r4"]
_SIMPLE_PATH = re.compile(r"[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)+")
_ELEMENT_TYPE_PARENTS = frozenset({"BackboneElement", "Element"})


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str
    url: str
    expression: str | None
    """The part of the definition's expression that applies to this resource type."""
    targets: tuple[str, ...]
    evaluate: Evaluate | None
    """Values of the parameter in a resource; None when the parameter has no index rows."""


@dataclass(frozen=True, slots=True)
class SearchParameterRegistry:
    by_type: dict[str, dict[str, SearchParameter]]
    common: dict[str, SearchParameter]
    """The parameters of every resource type (bases Resource and DomainResource)."""

    def parameters_for(self, resource_type: str | None) -> dict[str, SearchParameter]:
        if resource_type is None:
            return self.common
        return self.by_type.get(resource_type, self.common)


def _resolve(references: list[Any]) -> list[ResourceNode]:
    """Stand-in for FHIRPath `resolve()`: a typed, empty resource per reference, so `resolve() is X` works."""
    resolved = []
    for reference in references:
        if not isinstance(reference, dict):
            continue
        target_type = None
        if isinstance(reference.get("reference"), str):
            target = reference_target(reference["reference"])
            target_type = target.target_type if target else None
        target_type = target_type or reference.get("type")
        if isinstance(target_type, str):
            resolved.append(ResourceNode.create_node({"resourceType": target_type}, target_type))
    return resolved


_FHIRPATH_OPTIONS = {"userInvocationTable": {"resolve": {"fn": _resolve, "arity": {0: []}}}}


def _split_union(expression: str) -> list[str]:
    """The top-level `|` alternatives of an expression."""
    parts, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(expression):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


def _leading_type(part: str) -> str:
    return re.match(r"\(*\s*([A-Za-z]*)", part).group(1)  # type: ignore[union-attr]


def _path_steps(path: str) -> tuple[str, ...] | None:
    """The element names of a plain dotted path if it can be walked without the FHIR model, else None."""
    if not _SIMPLE_PATH.fullmatch(path):
        return None
    names = path.split(".")
    current = names[0]
    for name in names[1:]:
        element = f"{current}.{name}"
        if element in _R4["choiceTypePaths"] or element not in _R4["path2Type"]:
            return None
        element_type = _R4["path2Type"][element]
        current = element if element_type in _ELEMENT_TYPE_PARENTS else element_type
    return tuple(names[1:])


def _walker(steps: tuple[str, ...]) -> Evaluate:
    def evaluate(resource: dict[str, Any]) -> list[Any]:
        items: list[Any] = [resource]
        for step in steps:
            found: list[Any] = []
            for item in items:
                value = item.get(step) if isinstance(item, dict) else None
                if value is None:
                    continue
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
            if not found:
                return found
            items = found
        return items

    return evaluate


def _compiled(expression: str) -> Evaluate:
    function = fhirpathpy.compile(expression, _R4, _FHIRPATH_OPTIONS)

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        # fhirpathpy raises on shapes it does not expect (none among the 5,306 R4 examples); a resource
        # must still be storable, so it loses this parameter's rows rather than failing the write.
        try:
            return function(resource, None)
        except Exception:
            log.warning("search expression %r failed on %s/%s", expression, resource.get("resourceType"),
                        resource.get("id"), exc_info=True)
            return []

    return evaluate


def _evaluator(parts: list[str]) -> Evaluate:
    """Fast dictionary walks for plain paths; fhirpathpy (compiled once) for everything else."""
    evaluators = []
    complex_parts = []
    for part in parts:
        steps = _path_steps(part)
        if steps is None:
            complex_parts.append(part)
        else:
            evaluators.append(_walker(steps))
    if complex_parts:
        evaluators.append(_compiled(" | ".join(complex_parts)))
    if len(evaluators) == 1:
        return evaluators[0]
    return lambda resource: [value for evaluate in evaluators for value in evaluate(resource)]


def _common_parameter(definition: dict[str, Any]) -> SearchParameter:
    expression = definition.get("expression")
    evaluate = None
    if expression and definition["code"] not in COLUMN_PARAMETERS and definition["type"] in INDEXED_TYPES:
        # `Resource.meta.tag` never names the concrete type; evaluate it on any type as a plain walk.
        steps = [tuple(part.split(".")[1:]) for part in _split_union(expression)]
        walkers = [_walker(s) for s in steps]
        evaluate = walkers[0] if len(walkers) == 1 else (lambda r: [v for w in walkers for v in w(r)])
    return SearchParameter(definition["code"], definition["type"], definition["url"], expression,
                           tuple(definition.get("target", ())), evaluate)


def load_search_parameters(path: Path = SEARCH_PARAMETERS_FILE) -> SearchParameterRegistry:
    """Read the vendored SearchParameters and compile their expressions for every base type."""
    definitions = json.loads(path.read_text())["searchParameters"]
    common = {d["code"]: _common_parameter(d) for d in definitions
              if any(base in COMMON_BASES for base in d["base"]) and d.get("expression")}
    by_type: dict[str, dict[str, SearchParameter]] = {}
    for definition in definitions:
        expression = definition.get("expression")
        if definition["type"] not in INDEXED_TYPES or not expression:
            continue
        parts = _split_union(expression)
        for base in definition["base"]:
            if base in COMMON_BASES:
                continue
            own_parts = [part for part in parts if _leading_type(part) == base]
            if not own_parts:
                continue
            by_type.setdefault(base, dict(common))[definition["code"]] = SearchParameter(
                definition["code"], definition["type"], definition["url"], " | ".join(own_parts),
                tuple(definition.get("target", ())), _evaluator(own_parts))
    return SearchParameterRegistry(by_type, common)


@lru_cache(maxsize=1)
def search_parameters() -> SearchParameterRegistry:
    """The registry, loaded on first use (call it at start-up to pay the ~1 s compile cost there)."""
    return load_search_parameters()


def parameters_for(resource_type: str | None) -> dict[str, SearchParameter]:
    """Search parameters of `resource_type` by code, including the common ones (`_id`, `_tag`, ...).

    `None` (a search across all types) gives the common parameters only.
    """
    return search_parameters().parameters_for(resource_type)
