"""R4 validation: official examples pass; structure and required-binding problems are all reported with their paths."""

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from fhir_server.errors import Issue
from fhir_server.validation import validate_resource
from fhir_server.validation.schema import GENERATED_MODULE, detailed_issues, fast_validators, schema_sha256

FIXTURES = Path(__file__).with_name("fixtures")
EXAMPLES = sorted(FIXTURES.glob("*.json"))


def example(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def patient(**elements: Any) -> dict[str, Any]:
    return {**example("Patient-example.json"), **elements}


def paths(issues: list[Issue]) -> list[str]:
    return [path for issue in issues for path in issue.expression]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_official_examples_are_valid(path: Path) -> None:
    resource = json.loads(path.read_text())
    assert validate_resource(resource, resource["resourceType"]) == []
    assert detailed_issues(resource, resource["resourceType"]) == []


def test_minimal_patient_is_valid() -> None:
    assert validate_resource({"resourceType": "Patient"}) == []


def test_unknown_element_is_rejected_with_its_path() -> None:
    issues = validate_resource(patient(favouriteColour="blue"))
    assert [(issue.code, issue.expression) for issue in issues] == [("structure", ("Patient.favouriteColour",))]
    assert "favouriteColour" in issues[0].diagnostics


def test_unknown_nested_element_is_rejected_with_its_path() -> None:
    issues = validate_resource({"resourceType": "Patient", "name": [{"family": "Chalmers", "nickname": "Jim"}]})
    assert paths(issues) == ["Patient.name[0].nickname"]


def test_wrong_type_is_rejected_with_its_path() -> None:
    issues = validate_resource(patient(birthDate=123))
    assert [(issue.code, issue.expression) for issue in issues] == [("structure", ("Patient.birthDate",))]


def test_wrong_type_in_an_array_names_the_index() -> None:
    issues = validate_resource({"resourceType": "Patient", "name": [{"given": ["Peter", 5]}]})
    assert paths(issues) == ["Patient.name[0].given[1]"]


@pytest.mark.parametrize("birth_date",
                         ["1990-13-01", "1990-1-1", "01.02.1990", "1990-01-01T10:00:00Z", "1990-01-01\n", ""])
def test_bad_date_format_is_rejected(birth_date: str) -> None:
    issues = validate_resource(patient(birthDate=birth_date))
    assert [(issue.code, issue.expression) for issue in issues] == [("value", ("Patient.birthDate",))]


def test_bad_id_is_rejected() -> None:
    assert paths(validate_resource(patient(id="has spaces"))) == ["Patient.id"]
    assert paths(validate_resource(patient(id="x" * 65))) == ["Patient.id"]


def test_code_outside_required_binding_is_rejected_once() -> None:
    issues = validate_resource(patient(gender="nope"))
    assert [(issue.code, issue.expression) for issue in issues] == [("code-invalid", ("Patient.gender",))]
    assert "administrative-gender" in issues[0].diagnostics


def test_nested_binding_in_a_datatype_is_checked() -> None:
    issues = validate_resource({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"},
                                                                      {"system": "beeper", "value": "2"}]})
    assert [(issue.code, issue.expression) for issue in issues] == [("code-invalid", ("Patient.telecom[1].system",))]


def test_binding_in_a_backbone_element_is_checked() -> None:
    issues = validate_resource({"resourceType": "Patient", "contact": [{"gender": "f"}]})
    assert paths(issues) == ["Patient.contact[0].gender"]


def test_binding_in_a_choice_type_is_checked() -> None:
    observation = {**example("Observation-example.json")}
    observation["valueQuantity"] = {**observation["valueQuantity"], "comparator": "~"}
    assert paths(validate_resource(observation)) == ["Observation.valueQuantity.comparator"]


def test_binding_inside_an_extension_is_checked() -> None:
    resource = {"resourceType": "Patient", "_birthDate": {"extension": [
        {"url": "http://example.org/x", "valueContactPoint": {"system": "pigeon"}}]}}
    assert paths(validate_resource(resource)) == ["Patient._birthDate.extension[0].valueContactPoint.system"]


def test_required_binding_on_codeable_concept() -> None:
    condition = example("Condition-example.json")
    condition["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "maybe"}]}
    issues = validate_resource(condition)
    assert [(issue.code, issue.expression) for issue in issues] == [("code-invalid", ("Condition.clinicalStatus",))]


def test_contained_resources_are_validated_against_their_own_type() -> None:
    resource = {"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "id": "o1", "name": "ACME", "colour": "red"},
        {"resourceType": "Practitioner", "gender": "nope"},
        {"id": "no-type"},
    ]}
    issues = validate_resource(resource)
    assert sorted(paths(issues)) == ["Patient.contained[0].colour", "Patient.contained[1].gender",
                                     "Patient.contained[2]"]


def test_bundle_entries_are_validated() -> None:
    bundle = example("Bundle-bundle-example.json")
    bundle["entry"][0]["resource"]["bogus"] = True
    assert paths(validate_resource(bundle)) == ["Bundle.entry[0].resource.bogus"]


def test_all_problems_are_listed() -> None:
    resource = patient(gender="nope", birthDate=123, favouriteColour="blue", active="yes",
                       telecom=[{"system": "beeper"}], name=[{"given": ["Peter", 5]}])
    issues = validate_resource(resource)
    assert sorted(paths(issues)) == ["Patient.active", "Patient.birthDate", "Patient.favouriteColour",
                                     "Patient.gender", "Patient.name[0].given[1]", "Patient.telecom[0].system"]
    assert all(issue.severity == "error" for issue in issues)


def test_no_break_space_is_allowed_in_strings() -> None:
    assert validate_resource({"resourceType": "Patient", "name": [{"text": "Jean\u00a0Dupont"}]}) == []


def test_canonical_elements_may_carry_extensions() -> None:
    resource = {"resourceType": "Questionnaire", "status": "draft", "derivedFrom": ["http://example.org/q"],
                "_derivedFrom": [{"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]}
    assert validate_resource(resource) == []


@pytest.mark.parametrize("resource", [None, 1, "Patient", [], [{"resourceType": "Patient"}], True])
def test_non_object_is_one_issue(resource: object) -> None:
    issues = validate_resource(resource)
    assert [issue.code for issue in issues] == ["invalid"]


@pytest.mark.parametrize("resource", [{}, {"resourceType": None}, {"resourceType": ["Patient"]}, {"resourceType": ""},
                                      {"resourceType": "Patients"}, {"resourceType": "Resource"},
                                      {"resourceType": "HumanName"}])
def test_missing_or_unknown_resource_type_is_one_issue(resource: dict[str, Any]) -> None:
    issues = validate_resource(resource)
    assert [(issue.code, issue.expression) for issue in issues] == [("invalid", ("resourceType",))]


def test_resource_type_must_be_the_expected_one() -> None:
    issues = validate_resource(patient(), expected_type="Observation")
    assert [(issue.code, issue.expression) for issue in issues] == [("invalid", ("resourceType",))]
    assert "Observation" in issues[0].diagnostics
    assert validate_resource(patient(), expected_type="Patient") == []


def test_deep_nesting_does_not_raise() -> None:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(5000):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    issues = validate_resource({"resourceType": "Patient", "extension": [extension]})
    assert issues and all(isinstance(issue, Issue) for issue in issues)


def test_any_json_value_anywhere_does_not_raise() -> None:
    values: list[Any] = [None, True, 0, -1.5, "", "x", [], [None], {}, {"system": ["x"], "code": {}},
                         {"coding": [{"system": [], "code": None}]}, [{"resourceType": 5}], [{"resourceType": ["Patient"]}],
                         {"resourceType": "Patient"}, 1.5, 2**40]
    rng = random.Random(4)
    originals = [json.loads(path.read_text()) for path in EXAMPLES]
    for _ in range(1500):
        resource = copy.deepcopy(rng.choice(originals))
        node: Any = resource
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = rng.choice(keys)
            if not isinstance(node[key], (dict, list)) or rng.random() < 0.3:
                node[key] = rng.choice(values)
                break
            node = node[key]
        for issue in validate_resource(resource):
            assert isinstance(issue, Issue)


def test_compiled_validator_is_current() -> None:
    module_file = Path(__file__).parents[2] / (GENERATED_MODULE.replace(".", "/") + ".py")
    if not module_file.exists():
        pytest.skip("compiled schema not built (python -m fhir_server.validation.build); jsonschema is used instead")
    assert fast_validators() is not None, f"{module_file} was built from another schema than {schema_sha256()}"
