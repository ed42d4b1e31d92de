"""The search parameter registry: R4 SearchParameters and our own from `resources/`, each expression compiled once
per base type."""

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import orjson
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_server.paths import RESOURCES_DIR
from fhir_server.search.values import reference_target
from fhir_server.storage import tenants

log = logging.getLogger(__name__)

SEARCH_PARAMETERS_FILE = RESOURCES_DIR / "search-parameters.json"
LOCAL_SEARCH_PARAMETERS_FILE = RESOURCES_DIR / "search-parameters-local.json"
"""The server's own SearchParameters (e.g. Task `due`), kept apart from the vendored file that a script rewrites."""

# Parameter types with an index table of their own; a composite's components go to these tables too.
INDEXED_TYPES = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})
# Served from columns of the `resource` table rather than from index rows.
COLUMN_PARAMETERS = frozenset({"_id", "_lastUpdated"})
COMMON_BASES = ("Resource", "DomainResource")

Evaluate = Callable[[dict[str, Any]], list[Any]]
EvaluateComponent = Callable[[Any, dict[str, Any]], list[Any]]
"""Values of a composite's component in one element (the resource is there for `%resource` paths)."""

_R4 = models["r4"]
_SIMPLE_PATH = re.compile(r"[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)+")
_ELEMENT_TYPE_PARENTS = frozenset({"BackboneElement", "Element"})
# Backbone elements have no path2Type entry of their own; their children do.
_BACKBONE_ELEMENTS = frozenset(path.rpartition(".")[0] for path in _R4["path2Type"])
_WHERE_EQUALS = re.compile(
    r"([A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)+)\.where\(([a-z][A-Za-z0-9]*) ?= ?'([^'\\]*)'\)"
    r"(?:\.([a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)*))?")
_WHERE_RESOLVE_IS = re.compile(r"([A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)+)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)")
_OF_TYPE = re.compile(r"\(?([A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)*)\.([a-z][A-Za-z0-9]*)\.ofType\(([A-Za-z]+)\)\)?")


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
    """Values of the parameter in a resource; None when the parameter has no index rows.

    For a composite: the elements its components are read from, together."""
    components: tuple["Component", ...] = ()
    """A composite's components, in the order of the search value's `$`-separated parts."""


@dataclass(frozen=True, slots=True)
class Component:
    type: str
    evaluate: EvaluateComponent


@dataclass(frozen=True, slots=True)
class SearchParameterRegistry:
    by_type: dict[str, dict[str, SearchParameter]]
    common: dict[str, SearchParameter]
    """The parameters of every resource type (bases Resource and DomainResource)."""

    def parameters_for(self, resource_type: str | None) -> dict[str, SearchParameter]:
        if resource_type is None:
            return self.common
        return self.by_type.get(resource_type, self.common)


def _reference_type(reference: Any) -> str | None:
    """The resource type a Reference points to, as far as its text (or `type`) tells."""
    if not isinstance(reference, dict):
        return None
    target_type = None
    if isinstance(reference.get("reference"), str):
        target = reference_target(reference["reference"])
        target_type = target.target_type if target else None
    target_type = target_type or reference.get("type")
    return target_type if isinstance(target_type, str) else None


def _resolve(references: list[Any]) -> list[ResourceNode]:
    """Stand-in for FHIRPath `resolve()`: a typed, empty resource per reference, so `resolve() is X` works."""
    return [ResourceNode.create_node({"resourceType": target_type}, target_type)
            for target_type in map(_reference_type, references) if target_type]


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


def _element_type(current: str, name: str) -> str | None:
    """Where the model describes the children of `current.name`, or None if a dictionary walk cannot
    follow it faithfully (a choice type, or an element the model does not know)."""
    element = f"{current}.{name}"
    if element in _R4["choiceTypePaths"]:
        return None
    element = _R4["pathsDefinedElsewhere"].get(element, element)
    element_type = _R4["path2Type"].get(element)
    if element_type is None:
        return element if element in _BACKBONE_ELEMENTS else None
    return element if element_type in _ELEMENT_TYPE_PARENTS else element_type


def _model_path(path: str) -> str | None:
    """The model's name for where a plain dotted path ends, or None if a dictionary walk cannot follow it."""
    if not _SIMPLE_PATH.fullmatch(path):
        return None
    names = path.split(".")
    current: str | None = names[0]
    for name in names[1:]:
        current = _element_type(current, name)
        if current is None:
            return None
    return current


def _path_steps(path: str) -> tuple[str, ...] | None:
    """The element names of a plain dotted path if it can be walked without the FHIR model, else None."""
    return tuple(path.split(".")[1:]) if _model_path(path) is not None else None


def _walk(items: list[Any], steps: tuple[str, ...]) -> list[Any]:
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


def _walker(steps: tuple[str, ...]) -> Evaluate:
    return lambda resource: _walk([resource], steps)


def _union(evaluators: list[Evaluate]) -> Evaluate:
    if len(evaluators) == 1:
        return evaluators[0]
    return lambda resource: [value for evaluate in evaluators for value in evaluate(resource)]


def _fast_walker(part: str) -> Evaluate | None:
    """A dictionary walk for the shapes most expressions take, or None to leave `part` to fhirpathpy:
    a plain path, `path.where(field = 'literal')[.more]`, `path.where(resolve() is Type)` and
    `path.choice.ofType(Type)`. On the 5,306 R4 examples they give the same values as fhirpathpy.
    """
    steps = _path_steps(part)
    if steps is not None:
        return _walker(steps)
    if match := _WHERE_EQUALS.fullmatch(part):
        path, field, literal, rest = match.groups()
        if _path_steps(path + "." + field + ("." + rest if rest else "")) is None:
            return None
        head = tuple(path.split(".")[1:])
        tail = tuple(rest.split(".")) if rest else ()

        def where_equals(resource: dict[str, Any]) -> list[Any]:
            kept = [item for item in _walk([resource], head) if isinstance(item, dict) and item.get(field) == literal]
            return _walk(kept, tail) if kept else kept

        return where_equals
    if match := _WHERE_RESOLVE_IS.fullmatch(part):
        path, target_type = match.groups()
        steps = _path_steps(path)
        if steps is None:
            return None
        return lambda resource: [item for item in _walk([resource], steps) if _reference_type(item) == target_type]
    if match := _OF_TYPE.fullmatch(part):
        path, choice, type_name = match.groups()
        owner = _model_path(path)
        choice_types = _R4["choiceTypePaths"].get(f"{owner}.{choice}", ())
        if owner is None or type_name[0].upper() + type_name[1:] not in choice_types:
            return None
        return _walker((*path.split(".")[1:], choice + type_name[0].upper() + type_name[1:]))
    return None


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
    """Dictionary walks where they are faithful (10x faster); fhirpathpy, compiled once, for the rest."""
    evaluators = []
    complex_parts = []
    for part in parts:
        walker = _fast_walker(part)
        if walker is None:
            complex_parts.append(part)
        else:
            evaluators.append(walker)
    if complex_parts:
        evaluators.append(_compiled(" | ".join(complex_parts)))
    return _union(evaluators)


def _common_parameter(definition: dict[str, Any]) -> SearchParameter:
    expression = definition.get("expression")
    evaluate = None
    if expression and definition["code"] not in COLUMN_PARAMETERS and definition["type"] in INDEXED_TYPES:
        # `Resource.meta.tag` never names the concrete type; evaluate it on any type as a plain walk.
        evaluate = _union([_walker(tuple(part.split(".")[1:])) for part in _split_union(expression)])
    return SearchParameter(definition["code"], definition["type"], definition["url"], expression,
                           tuple(definition.get("target", ())), evaluate)


_COMPONENT_OF_TYPE = re.compile(r"([a-z][A-Za-z0-9]*)\.ofType\(([A-Za-z]+)\)")


def _component_part(part: str) -> EvaluateComponent:
    """A component expression, relative to the composite's element: `code`, `value.ofType(Quantity)`,
    a dotted path, `value` (any value[x]) or `%resource.path`."""
    if part.startswith("%resource."):
        steps = tuple(part.split(".")[1:])
        return lambda element, resource: _walk([resource], steps)
    if match := _COMPONENT_OF_TYPE.fullmatch(part):
        key = match.group(1) + match.group(2)[0].upper() + match.group(2)[1:]
        return lambda element, resource: _walk([element], (key,))
    steps = tuple(part.split("."))
    if steps == ("value",):
        return lambda element, resource: [value for key, value in element.items()
                                          if key.startswith("value") and key[5:6].isupper()]
    return lambda element, resource: _walk([element], steps)


def _component_evaluator(expression: str) -> EvaluateComponent:
    parts = [_component_part(part) for part in _split_union(expression)]
    if len(parts) == 1:
        return parts[0]
    return lambda element, resource: [value for part in parts for value in part(element, resource)]


def _element_evaluator(base: str, parts: list[str]) -> Evaluate:
    """The elements of a composite: the resource itself (`Observation`) or elements below it."""
    evaluators = [(lambda resource: [resource]) if part == base else _evaluator([part]) for part in parts]
    return _union(evaluators)


def _composite(definition: dict[str, Any], base: str, own_parts: list[str],
               types_by_url: dict[str, str]) -> SearchParameter | None:
    components = []
    for component in definition.get("component") or []:
        component_type = types_by_url.get(component.get("definition"))
        if component_type not in INDEXED_TYPES or not component.get("expression"):
            return None
        components.append(Component(component_type, _component_evaluator(component["expression"])))
    if not components:
        return None
    return SearchParameter(definition["code"], "composite", definition["url"], " | ".join(own_parts), (),
                           _element_evaluator(base, own_parts), tuple(components))


def load_search_parameters(path: Path = SEARCH_PARAMETERS_FILE,
                           extra: tuple[dict[str, Any], ...] = ()) -> SearchParameterRegistry:
    """Read the vendored SearchParameters, then our own, then `extra` ones (stored on this server; a later one
    wins over an earlier one of the same code), and compile their expressions for every base type."""
    definitions = [*json.loads(path.read_text())["searchParameters"],
                   *json.loads(LOCAL_SEARCH_PARAMETERS_FILE.read_text())["searchParameters"], *extra]
    types_by_url = {d["url"]: d["type"] for d in definitions if d.get("url")}
    common = {d["code"]: _common_parameter(d) for d in definitions
              if any(base in COMMON_BASES for base in d["base"]) and d.get("expression")}
    by_type: dict[str, dict[str, SearchParameter]] = {}
    for definition in definitions:
        expression = definition.get("expression")
        if (definition["type"] not in INDEXED_TYPES and definition["type"] != "composite") or not expression:
            continue
        parts = _split_union(expression)
        for base in definition["base"]:
            if base in COMMON_BASES:
                continue
            own_parts = [part for part in parts if _leading_type(part) == base]
            if not own_parts:
                continue
            if definition["type"] == "composite":
                parameter = _composite(definition, base, own_parts, types_by_url)
                if parameter is None:
                    continue
            else:
                parameter = SearchParameter(definition["code"], definition["type"], definition["url"],
                                            " | ".join(own_parts), tuple(definition.get("target", ())),
                                            _evaluator(own_parts))
            by_type.setdefault(base, dict(common))[definition["code"]] = parameter
    return SearchParameterRegistry(by_type, common)


# The registry of each set of stored SearchParameters, and which set each tenant (None: no tenancy) uses;
# tenants without parameters of their own share the registry of the vendored ones.
_registries: dict[bytes, SearchParameterRegistry] = {}
_stored_by_tenant: dict[str | None, bytes] = {}
_NONE_STORED = orjson.dumps([])


def _tenant_key() -> str | None:
    tenant = tenants.current.get()
    return tenant.schema if tenant is not None else None


def use_stored_search_parameters(definitions: list[dict[str, Any]]) -> SearchParameterRegistry:
    """Rebuild the current tenant's registry with the active SearchParameters stored in it (replacing
    earlier ones); other tenants keep theirs."""
    _stored_by_tenant[_tenant_key()] = orjson.dumps(definitions, option=orjson.OPT_SORT_KEYS)
    for unused in set(_registries) - set(_stored_by_tenant.values()) - {_NONE_STORED}:
        del _registries[unused]
    return search_parameters()


def search_parameters() -> SearchParameterRegistry:
    """The current tenant's registry, loaded on first use (call it at start-up to pay the ~0.3 s compile cost
    there)."""
    key = _stored_by_tenant.get(_tenant_key(), _NONE_STORED)
    registry = _registries.get(key)
    if registry is None:
        registry = _registries[key] = load_search_parameters(extra=tuple(orjson.loads(key)))
    return registry

def parameters_for(resource_type: str | None) -> dict[str, SearchParameter]:
    """Search parameters of `resource_type` by code, including the common ones (`_id`, `_tag`, ...).

    `None` (a search across all types) gives the common parameters only.
    """
    return search_parameters().parameters_for(resource_type)


# Element types a date parameter indexes as exactly one row (a Timing, say, gives a row per event).
_ONE_ROW_DATE_TYPES = frozenset({"date", "dateTime", "instant", "Period"})


@cache
def one_date_row(resource_type: str, expression: str | None) -> bool:
    """Whether a date parameter's `expression` gives a resource of `resource_type` one index row at most: a
    plain path (`Patient.birthDate`, `Encounter.period`) none of whose elements repeats."""
    from fhir_server.validation.elements import type_infos

    if not expression or not _SIMPLE_PATH.fullmatch(expression) or not expression.startswith(resource_type + "."):
        return False
    info = type_infos().get(resource_type)
    element = None
    for step in expression.split(".")[1:]:
        element = info.elements.get(step) if info is not None else None
        if element is None or element.array:
            return False
        info = element.children
    return element is not None and element.type in _ONE_ROW_DATE_TYPES
