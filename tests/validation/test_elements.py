"""The element rules the JSON Schema leaves out: cardinality, choice types and integers, reported with their paths."""

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.errors import Issue
from fhir_server.validation import validate_resource

FIXTURES = Path(__file__).with_name("fixtures")
DATA_ABSENT = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                              "valueCode": "unknown"}]}
OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}


def example(name: str, *, without: tuple[str, ...] = (), **elements: Any) -> dict[str, Any]:
    resource = {**json.loads((FIXTURES / name).read_text()), **elements}
    for key in without:
        del resource[key]
    return resource


def found(issues: list[Issue]) -> list[tuple[str, str]]:
    return sorted((issue.code, path) for issue in issues for path in issue.expression)


@pytest.mark.parametrize(("name", "missing"), [
    ("Task-example1.json", ("status", "intent")),
    ("Communication-example.json", ("status",)),
    ("CommunicationRequest-example.json", ("status",)),
    ("Observation-example.json", ("status", "code")),
    ("Bundle-bundle-example.json", ("type",)),
])
def test_missing_required_element_is_reported_at_its_path(name: str, missing: tuple[str, ...]) -> None:
    resource = example(name, without=missing)
    resource_type = resource["resourceType"]
    assert found(validate_resource(resource)) == sorted(("required", f"{resource_type}.{key}") for key in missing)


def test_extension_alone_presents_a_required_primitive() -> None:
    assert validate_resource(example("Task-example1.json", without=("status",), _status=DATA_ABSENT)) == []


def test_missing_required_element_of_a_backbone_element_is_reported_once() -> None:
    resource = {"resourceType": "Patient", "link": [{"other": {"reference": "Patient/1"}, "type": "seealso"},
                                                    {"type": "refer"}]}
    assert found(validate_resource(resource)) == [("required", "Patient.link[1].other")]


def test_missing_required_element_of_a_datatype_is_reported() -> None:
    resource = {"resourceType": "Patient", "extension": [{"valueString": "no url"}]}
    assert found(validate_resource(resource)) == [("required", "Patient.extension[0].url")]


def test_an_empty_array_does_not_present_a_required_element() -> None:
    resource = {"resourceType": "SearchParameter", "url": "http://example.org/sp", "name": "x", "status": "draft",
                "description": "x", "code": "x", "base": [], "type": "token"}
    assert found(validate_resource(resource)) == [("required", "SearchParameter.base")]


def test_required_choice_element_takes_any_one_variant() -> None:
    request = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/1"}}
    assert found(validate_resource(request)) == [("required", "MedicationRequest.medication[x]")]
    assert validate_resource({**request, "medicationCodeableConcept": {"text": "aspirin"}}) == []
    assert validate_resource({**request, "medicationReference": {"reference": "Medication/1"}}) == []


def test_two_variants_of_a_choice_element_are_rejected() -> None:
    issues = validate_resource(example("Patient-example.json", deceasedBoolean=True,
                                       deceasedDateTime="2015-02-14T13:42:00+10:00"))
    assert found(issues) == [("structure", "Patient.deceased[x]")]
    assert "deceasedBoolean" in issues[0].diagnostics and "deceasedDateTime" in issues[0].diagnostics


def test_a_choice_variant_may_carry_its_own_extensions() -> None:
    extension = {"url": "http://example.org/x", "valueString": "y", "_valueString": DATA_ABSENT}
    assert validate_resource({"resourceType": "Patient", "extension": [extension]}) == []
    extension = {"url": "http://example.org/x", "valueString": "y", "_valueCode": DATA_ABSENT}
    assert found(validate_resource({"resourceType": "Patient", "extension": [extension]})) == [
        ("structure", "Patient.extension[0].value[x]")]


@pytest.mark.parametrize(("elements", "path"), [
    ({"maritalStatus": [{"text": "married"}]}, "Patient.maritalStatus"),
    ({"birthDate": "1974-12-25", "_birthDate": [DATA_ABSENT]}, "Patient._birthDate"),
    ({"contact": [{"name": [{"family": "Du Marché"}]}]}, "Patient.contact[0].name"),
    ({"gender": ["male"]}, "Patient.gender"),
])
def test_an_array_where_one_value_belongs_is_rejected_once(elements: dict[str, Any], path: str) -> None:
    assert found(validate_resource({"resourceType": "Patient", **elements})) == [("structure", path)]


def test_a_single_value_where_an_array_belongs_is_rejected_once() -> None:
    assert found(validate_resource({"resourceType": "Patient", "name": {"family": "Chalmers"}})) == [
        ("structure", "Patient.name")]


@pytest.mark.parametrize(("element", "value"), [
    ("valueInteger", 1.5), ("valueInteger", 1.0), ("valueInteger", 2**31), ("valueInteger", -2**31 - 1),
    ("valuePositiveInt", 0), ("valuePositiveInt", -3), ("valuePositiveInt", 2.5),
    ("valueUnsignedInt", -1), ("valueUnsignedInt", 2**31),
])
def test_integer_outside_its_type_is_rejected(element: str, value: float) -> None:
    resource = {"resourceType": "Patient", "extension": [{"url": "http://example.org/x", element: value}]}
    assert found(validate_resource(resource)) == [("value", f"Patient.extension[0].{element}")]


@pytest.mark.parametrize(("element", "value"), [
    ("valueInteger", -2**31), ("valueInteger", 2**31 - 1), ("valueInteger", 0),
    ("valuePositiveInt", 1), ("valueUnsignedInt", 0), ("valueUnsignedInt", 2**31 - 1),
])
def test_integer_within_its_type_is_accepted(element: str, value: int) -> None:
    resource = {"resourceType": "Patient", "extension": [{"url": "http://example.org/x", element: value}]}
    assert validate_resource(resource) == []


def test_integer_element_of_a_resource_is_checked() -> None:
    assert found(validate_resource(example("Patient-example.json", multipleBirthInteger=1.5))) == [
        ("value", "Patient.multipleBirthInteger")]
    assert found(validate_resource({"resourceType": "Patient", "multipleBirthInteger": "2"})) == [
        ("structure", "Patient.multipleBirthInteger")]


def test_contained_resources_follow_their_own_rules() -> None:
    resource = {"resourceType": "Patient", "contained": [
        {"resourceType": "Observation", "id": "o1"},
        {**OBSERVATION, "id": "o2", "valueInteger": 0.5},
    ]}
    assert found(validate_resource(resource)) == [("required", "Patient.contained[0].code"),
                                                  ("required", "Patient.contained[0].status"),
                                                  ("value", "Patient.contained[1].valueInteger")]


def test_bundle_entries_follow_their_own_rules() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": example("Task-example1.json", without=("intent",))},
        {"resource": {**OBSERVATION, "valueBoolean": True, "valueString": "yes"}},
        {"resource": {"resourceType": "Patient", "link": [{"type": "refer"}]}},
    ]}
    assert found(validate_resource(bundle)) == [("required", "Bundle.entry[0].resource.intent"),
                                                ("required", "Bundle.entry[2].resource.link[0].other"),
                                                ("structure", "Bundle.entry[1].resource.value[x]")]


def test_every_problem_is_listed() -> None:
    resource = example("Task-example1.json", without=("status", "intent"), priority="soon",
                       restriction={"repetitions": 0}, input=[{"type": {"text": "x"}}], bogus=1)
    assert found(validate_resource(resource)) == [
        ("code-invalid", "Task.priority"),
        ("required", "Task.input[0].value[x]"),
        ("required", "Task.intent"),
        ("required", "Task.status"),
        ("structure", "Task.bogus"),
        ("value", "Task.restriction.repetitions"),
    ]
