"""Vendor the official R4 example resources of the seven domain types into tests/fixtures/r4-examples.

Source: npm `hl7.fhir.r4.examples@4.0.1` (the examples published with FHIR R4 4.0.1).
Run: python scripts/vendor_examples.py
"""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from npm_package import unpacked  # noqa: E402

SOURCE = "hl7.fhir.r4.examples@4.0.1"
TYPES = ("Patient", "Communication", "CommunicationRequest", "Task", "DocumentReference", "QuestionnaireResponse",
         "MeasureReport")
TARGET = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "r4-examples"


def main() -> None:
    package = unpacked(SOURCE)
    shutil.rmtree(TARGET, ignore_errors=True)
    TARGET.mkdir(parents=True)
    copied = 0
    for path in sorted(package.glob("*.json")):
        if not path.name.startswith(tuple(f"{t}-" for t in TYPES)):
            continue
        resource = json.loads(path.read_text())
        if resource.get("resourceType") in TYPES:
            shutil.copy(path, TARGET / path.name)
            copied += 1
    (TARGET / "SOURCE.txt").write_text(f"Copied unmodified from npm {SOURCE} by scripts/vendor_examples.py\n")
    print(f"copied {copied} examples from {SOURCE} to {TARGET}")


if __name__ == "__main__":
    main()
