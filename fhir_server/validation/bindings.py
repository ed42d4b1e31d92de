"""Required code bindings: a walk of the resource guided by terminology/required-bindings.json."""

from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from fhir_server.errors import Issue
from fhir_server.paths import TERMINOLOGY_DIR

BINDINGS_PATH = TERMINOLOGY_DIR / "required-bindings.json"


@dataclass(frozen=True, slots=True)
class ValueSet:
    url: str
    codes: frozenset[str]
    codings: frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """What the map says about one JSON property: its type's element map, and the value set binding it (if any)."""

    type: str
    children: dict[str, "ElementInfo"] | None
    value_set: ValueSet | None


@cache
def element_maps() -> dict[str, dict[str, ElementInfo]]:
    """Type name (or backbone path) → JSON property → ElementInfo, with types resolved to their own maps."""
    document = orjson.loads(BINDINGS_PATH.read_bytes())
    value_sets = {url: ValueSet(url, frozenset(code for codes in systems.values() for code in codes),
                                frozenset((system, code) for system, codes in systems.items() for code in codes))
                  for url, systems in document["valueSets"].items()}
    maps: dict[str, dict[str, ElementInfo]] = {name: {} for name in document["types"]}
    for name, elements in document["types"].items():
        for key, spec in elements.items():
            maps[name][key] = ElementInfo(spec[0], maps.get(spec[0]), value_sets[spec[1]] if len(spec) > 1 else None)
    return maps


@cache
def _primitive_extras() -> ElementInfo:
    return ElementInfo("Element", element_maps()["Element"], None)


def binding_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Every code in `resource` that is outside the value set its element is bound to with strength required."""
    issues: list[Issue] = []
    elements = element_maps().get(resource_type)
    if elements is not None:
        _walk(resource, elements, resource_type, issues)
    return issues


def _walk(node: dict[str, Any], elements: dict[str, ElementInfo], path: str, issues: list[Issue]) -> None:
    for key, value in node.items():
        element = elements.get(key)
        if element is None:
            # `_name` holds the id and extensions of primitive `name`, which may carry bound codes themselves.
            if key[:1] != "_":
                continue
            element = _primitive_extras()
        if isinstance(value, list):
            for index, item in enumerate(value):
                _visit(item, element, f"{path}.{key}[{index}]", issues)
        else:
            _visit(value, element, f"{path}.{key}", issues)


def _visit(value: Any, element: ElementInfo, path: str, issues: list[Issue]) -> None:
    if element.value_set is not None:
        _check_code(value, element, path, issues)
    if not isinstance(value, dict):
        return
    if element.type == "Resource":
        resource_type = value.get("resourceType")
        children = element_maps().get(resource_type) if isinstance(resource_type, str) else None
    else:
        children = element.children
    if children is not None:
        _walk(value, children, path, issues)


def _coding(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
        return value["system"], value["code"]
    return None


def _check_code(value: Any, element: ElementInfo, path: str, issues: list[Issue]) -> None:
    value_set = element.value_set
    if element.type == "CodeableConcept":
        if not isinstance(value, dict):
            return
        codings = value.get("coding") if isinstance(value.get("coding"), list) else []
        pairs = [pair for pair in map(_coding, codings) if pair is not None]
        if not any(pair in value_set.codings for pair in pairs):
            found = ", ".join(f"{system}|{code}" for system, code in pairs) or "no coding with system and code"
            issues.append(Issue("code-invalid", f"None of the codings ({found}) is in the required value set "
                                f"{value_set.url}", expression=(path,)))
    elif isinstance(value, str) and value not in value_set.codes:
        issues.append(Issue("code-invalid", f"'{value}' is not in the required value set {value_set.url}",
                            expression=(path,)))
