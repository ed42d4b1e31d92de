"""Subsetted resources for `_summary` and `_elements`, marked SUBSETTED; the elements come from the R4
StructureDefinitions (`resources/summary-elements.json`, made by scripts/vendor_summary.py)."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from fhir_server import json_numbers
from fhir_server.paths import RESOURCES_DIR

SUMMARY_ELEMENTS_FILE = RESOURCES_DIR / "summary-elements.json"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})

Tree = dict[str, Any]
"""Element name → None (keep it whole) or a Tree (a backbone element: keep those children)."""


@dataclass(frozen=True, slots=True)
class Elements:
    """What `_summary=true` keeps of one resource type, and its mandatory top-level elements."""

    summary: Tree
    mandatory: frozenset[str]


@lru_cache(maxsize=1)
def _elements_by_type() -> dict[str, Elements]:
    document = orjson.loads(SUMMARY_ELEMENTS_FILE.read_bytes())
    return {resource_type: Elements(entry["summary"], frozenset(entry["mandatory"]))
            for resource_type, entry in document["types"].items()}


def _elements(resource_type: str) -> Elements:
    return _elements_by_type().get(resource_type) or Elements({}, frozenset())


def _lookup(tree: Tree, key: str) -> tuple[bool, Tree | None]:
    """Whether `key` (an element, a choice like `valueQuantity`, or a primitive's `_extension`) is in `tree`."""
    name = key[1:] if key.startswith("_") else key
    if name in tree:
        return True, tree[name]
    for index in range(1, len(name)):
        if name[index].isupper() and name[:index] + "[x]" in tree:
            return True, None
    return False, None


def _pruned(node: dict[str, Any], tree: Tree) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in node.items():
        found, children = _lookup(tree, key)
        if not found:
            continue
        if children is None:
            kept[key] = value
        elif isinstance(value, list):
            kept[key] = [_pruned(item, children) if isinstance(item, dict) else item for item in value]
        elif isinstance(value, dict):
            kept[key] = _pruned(value, children)
    return kept


def _top_level(resource: dict[str, Any], names: frozenset[str] | set[str]) -> dict[str, Any]:
    """The named top-level elements; a choice element may be named `deceased`, `deceased[x]` or `deceasedBoolean`."""
    tree: Tree = dict.fromkeys([*names, *(name + "[x]" for name in names if not name.endswith("]"))])
    return {key: value for key, value in resource.items() if key in _ALWAYS_KEPT or _lookup(tree, key)[0]}


def subset(content: bytes, summary: str | None, elements: set[str] | None) -> bytes:
    """One stored resource under `_summary` (true, text or data) or `_elements` (names of top-level elements)."""
    resource = json_numbers.loads(content)
    definition = _elements(resource.get("resourceType", ""))
    if elements is not None:
        kept = _top_level(resource, elements | definition.mandatory)
    elif summary == "true":
        kept = {"resourceType": resource["resourceType"], **_pruned(resource, definition.summary)}
    elif summary == "text":
        kept = _top_level(resource, definition.mandatory | {"text"})
    else:  # data
        kept = {key: value for key, value in resource.items() if key != "text"}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return json_numbers.dumps(kept)
