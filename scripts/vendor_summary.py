"""Regenerate `resources/summary-elements.json`: per R4 resource type, the elements `_summary=true` keeps
(isSummary, nested into backbone elements) and the mandatory top-level elements `_summary=text` and
`_elements` keep, from the official R4 StructureDefinitions."""

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npm_package import unpacked  # noqa: E402

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
TARGET = Path(__file__).resolve().parent.parent / "resources" / "summary-elements.json"


def summary_tree(elements: list[dict[str, Any]], resource_type: str) -> dict[str, Any]:
    """Nested {name: null (keep whole) | {child: ...} (a backbone element: keep its summary children)}."""
    tree: dict[str, Any] = {}
    paths = {element["path"] for element in elements}
    for element in elements:
        path = element["path"]
        if path == resource_type or not element.get("isSummary"):
            continue
        names = path.split(".")[1:]
        node: dict[str, Any] | None = tree
        for name in names[:-1]:
            node = node.get(name) if node is not None else None  # a summary child of a non-summary parent is dropped
        if node is not None:
            has_children = any(other.startswith(path + ".") for other in paths)
            node.setdefault(names[-1], {} if has_children else None)
    return tree


def main() -> None:
    package = unpacked(PACKAGE)
    types = {}
    for path in sorted(package.glob("StructureDefinition-*.json")):
        definition = json.loads(path.read_text())
        if definition.get("kind") != "resource" or definition.get("derivation") != "specialization" \
                or definition.get("abstract"):
            continue
        resource_type = definition["type"]
        elements = definition["snapshot"]["element"]
        mandatory = [element["path"].split(".")[1] for element in elements
                     if element["path"].count(".") == 1 and element.get("min", 0) >= 1]
        types[resource_type] = {"summary": summary_tree(elements, resource_type), "mandatory": mandatory}
    document = {
        "source": f"npm {PACKAGE} package/StructureDefinition-*.json (FHIR R4 4.0.1), isSummary and min",
        "generatedBy": "scripts/vendor_summary.py",
        "fhirVersion": "4.0.1",
        "types": types,
    }
    TARGET.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote summary elements of {len(types)} resource types to {TARGET}")


if __name__ == "__main__":
    main()
