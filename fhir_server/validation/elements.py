"""The element rules the R4 JSON Schema leaves out (cardinality, choice types, integer ranges, required code
bindings), checked in one walk of the resource guided by resources/elements.json."""

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from fhir_server.errors import Issue
from fhir_server.paths import RESOURCES_DIR, TERMINOLOGY_DIR
from fhir_server.validation.schema import resource_types

ELEMENTS_PATH = RESOURCES_DIR / "elements.json"
VALUE_SETS_PATH = TERMINOLOGY_DIR / "required-value-sets.json"
# A required binding is checked on a code, or on the codings of a CodeableConcept.
BOUND_TYPES = frozenset({"code", "CodeableConcept"})
INTEGER_RANGES = {"integer": (-2**31, 2**31 - 1), "positiveInt": (1, 2**31 - 1), "unsignedInt": (0, 2**31 - 1)}
ABSENT = (None, [])


@dataclass(frozen=True, slots=True)
class ValueSet:
    url: str
    codes: frozenset[str]
    codings: frozenset[tuple[str, str]]


@dataclass(slots=True)
class TypeInfo:
    """The JSON properties of a type (or backbone element), and its elements with min >= 1, each with the
    properties that present it (`status` or `_status`; every variant of a choice)."""

    elements: "dict[str, ElementInfo]"
    required: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """What the map says about one JSON property."""

    type: str
    array: bool
    choice: str | None
    children: TypeInfo | None
    value_set: ValueSet | None
    integer_range: tuple[int, int] | None
    # A primitive whose value has nothing to check here (the schema checks its format): the walk skips it.
    inert: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inert", self.children is None and self.value_set is None
                           and self.integer_range is None and self.type != "Resource")


@cache
def value_sets() -> dict[str, ValueSet]:
    document = orjson.loads(VALUE_SETS_PATH.read_bytes())
    return {url: ValueSet(url, frozenset(code for codes in systems.values() for code in codes),
                          frozenset((system, code) for system, codes in systems.items() for code in codes))
            for url, systems in document["valueSets"].items()}


@cache
def type_infos() -> dict[str, TypeInfo]:
    """Type name (or backbone path) → TypeInfo, with element types resolved to their own TypeInfo."""
    document = orjson.loads(ELEMENTS_PATH.read_bytes())["types"]
    infos = {name: TypeInfo({}) for name in document}
    for name, elements in document.items():
        info = infos[name]
        required = []
        for element_name, (types, cardinality, *binding) in elements.items():
            minimum, maximum = cardinality.split("..")
            choice = element_name if element_name.endswith("[x]") else None
            variants = ([(choice[:-3] + type_[0].upper() + type_[1:], type_) for type_ in types] if choice
                        else [(element_name, types)])
            value_set = value_sets()[binding[0]] if binding else None
            for key, type_ in variants:
                children = infos.get(type_)
                info.elements[key] = ElementInfo(type_, maximum != "1", choice, children,
                                                 value_set if type_ in BOUND_TYPES else None,
                                                 INTEGER_RANGES.get(type_))
                if children is None:
                    # A primitive's id and extensions sit beside it in `_key`, which alone also presents it.
                    info.elements[f"_{key}"] = ElementInfo("Element", maximum != "1", choice, infos["Element"],
                                                           None, None)
            if minimum != "0":
                keys = tuple(key for variant, _ in variants for key in (variant, f"_{variant}") if key in info.elements)
                required.append((element_name, keys))
        info.required = tuple(required)
    return infos


def element_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Every violation of the element rules in `resource`, contained resources and Bundle entries included."""
    issues: list[Issue] = []
    info = type_infos().get(resource_type)
    if info is not None:
        _walk(resource, info, resource_type, issues)
    return issues


def _walk(node: dict[str, Any], info: TypeInfo, path: str, issues: list[Issue]) -> None:
    elements = info.elements
    variants: dict[str, str] | None = None
    for key, value in node.items():
        element = elements.get(key)
        if element is None:
            continue  # an unknown property, which the schema reports
        if element.choice is not None:
            variant = key[1:] if key[0] == "_" else key
            variants = variants if variants is not None else {}
            first = variants.setdefault(element.choice, variant)
            if first != variant:
                issues.append(Issue("structure", f"{element.choice} has at most one value, but both {first} and "
                                    f"{variant} are present", expression=(f"{path}.{element.choice}",)))
        if isinstance(value, list):
            if not element.array:
                issues.append(Issue("structure", f"{key} has at most one value, so it must not be an array",
                                    expression=(f"{path}.{key}",)))
            elif not element.inert:
                for index, item in enumerate(value):
                    _visit(item, element, f"{path}.{key}[{index}]", issues)
        elif element.array:
            issues.append(Issue("structure", f"{key} may repeat, so it must be an array", expression=(f"{path}.{key}",)))
        elif not element.inert:
            _visit(value, element, f"{path}.{key}", issues)
    for name, keys in info.required:
        for key in keys:
            if node.get(key) not in ABSENT:
                break
        else:
            issues.append(Issue("required", f"{name} is required (minimum cardinality 1) but missing",
                                expression=(f"{path}.{name}",)))


def _visit(value: Any, element: ElementInfo, path: str, issues: list[Issue]) -> None:
    if element.value_set is not None:
        _check_code(value, element, path, issues)
    elif element.integer_range is not None:
        _check_integer(value, element, path, issues)
    if not isinstance(value, dict):
        return
    if element.type == "Resource":
        resource_type = value.get("resourceType")
        known = isinstance(resource_type, str) and resource_type in resource_types()
        children = type_infos()[resource_type] if known else None
    else:
        children = element.children
    if children is not None:
        _walk(value, children, path, issues)


def _check_integer(value: Any, element: ElementInfo, path: str, issues: list[Issue]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # not a number at all, which the schema reports
    low, high = element.integer_range
    if not (isinstance(value, int) and low <= value <= high):
        issues.append(Issue("value", f"{value!r} is not a valid {element.type} (a whole number from {low} to {high})",
                            expression=(path,)))


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
