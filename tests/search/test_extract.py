import time
from datetime import datetime, timezone
from decimal import Decimal

from fhir_server.search.extract import extract_index
from fhir_server.search.parameters import search_parameters
from fhir_server.search.values import FAR_FUTURE

UTC = timezone.utc

PATIENT = {
    "resourceType": "Patient", "id": "p1",
    "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z", "profile": ["http://example.org/p"],
             "tag": [{"system": "http://example.org/tags", "code": "vip"}], "source": "http://src.example.org"},
    "identifier": [{"system": "urn:mrn", "value": "12345", "type": {"text": "MRN"}}],
    "active": True,
    "name": [{"use": "official", "family": "Müller", "given": ["Jöhn", "Q"]}, {"text": "Johnny"}],
    "telecom": [{"system": "phone", "value": "555-1234"}, {"system": "email", "value": "j@example.org"}],
    "gender": "male", "birthDate": "1970-03-04",
    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "62701", "country": "US"}],
    "generalPractitioner": [{"reference": "Practitioner/pr1"}],
    "managingOrganization": {"reference": "http://other.org/fhir/Organization/o1"},
    "extension": [{"url": "http://example.org/ext", "valueReference": {"reference": "RelatedPerson/rp1"}}],
    "contained": [{"resourceType": "Practitioner", "id": "c1",
                   "extension": [{"url": "u", "valueReference": {"reference": "Location/l1"}}]}],
    "contact": [{"organization": {"reference": "#c1"}}],
}


def by_param(rows, param):
    return [row[1:] for row in rows if row[0] == param]


def test_strings_index_each_name_part_and_the_full_name():
    rows = extract_index(PATIENT).string
    assert by_param(rows, "family") == [("muller", "Müller")]
    assert by_param(rows, "given") == [("john", "Jöhn"), ("q", "Q")]
    assert set(by_param(rows, "name")) == {("john", "Jöhn"), ("q", "Q"), ("muller", "Müller"),
                                           ("john q muller", "Jöhn Q Müller"), ("johnny", "Johnny")}
    assert ("springfield", "Springfield") in by_param(rows, "address")
    assert ("1 main st springfield 62701 us", "1 Main St Springfield 62701 US") in by_param(rows, "address")
    assert by_param(rows, "address-postalcode") == [("62701", "62701")]


def test_tokens_from_identifier_contact_point_code_boolean_and_coding():
    rows = extract_index(PATIENT).token
    assert by_param(rows, "identifier") == [("urn:mrn", "12345", "mrn")]
    assert by_param(rows, "phone") == [("phone", "555-1234", None)]
    assert by_param(rows, "email") == [("email", "j@example.org", None)]
    assert by_param(rows, "gender") == [(None, "male", None)]
    assert by_param(rows, "active") == [(None, "true", None)]
    assert by_param(rows, "_tag") == [("http://example.org/tags", "vip", None)]


def test_codeable_concept_rows_carry_text_for_the_text_modifier():
    task = {"resourceType": "Task", "id": "t", "status": "ready", "intent": "order",
            "code": {"coding": [{"system": "http://s", "code": "fulfill", "display": "Fulfill"}], "text": "Do It"}}
    assert by_param(extract_index(task).token, "code") == [("http://s", "fulfill", "do it")]
    task["code"] = {"text": "Only text"}
    assert by_param(extract_index(task).token, "code") == [(None, None, "only text")]


def test_dates_cover_precision_and_periods():
    rows = extract_index(PATIENT).date
    assert by_param(rows, "birthdate") == [(datetime(1970, 3, 4, tzinfo=UTC),
                                            datetime(1970, 3, 4, 23, 59, 59, 999999, tzinfo=UTC))]
    report = {"resourceType": "MeasureReport", "id": "m", "status": "complete", "type": "summary",
              "measure": "http://example.org/Measure/m1", "period": {"start": "2024-01"}}
    assert by_param(extract_index(report).date, "period") == [(datetime(2024, 1, 1, tzinfo=UTC), FAR_FUTURE)]


def test_uris_and_quantities_and_numbers():
    assert by_param(extract_index(PATIENT).uri, "_profile") == [("http://example.org/p",)]
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "w"},
                   "valueQuantity": {"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org",
                                     "code": "kg"}}
    assert by_param(extract_index(observation).quantity, "value-quantity") == [
        (Decimal("70.5"), Decimal("70.45"), Decimal("70.55"), "http://unitsofmeasure.org", "kg", "kg",
         "g", Decimal("70500"), Decimal("70450"), Decimal("70550"))]
    risk = {"resourceType": "RiskAssessment", "id": "r", "status": "final", "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": 0.25}]}
    assert by_param(extract_index(risk).number, "probability") == [
        (Decimal("0.25"), Decimal("0.245"), Decimal("0.255"))]


def test_references_relative_absolute_and_uncovered():
    rows = extract_index(PATIENT).reference
    assert ("general-practitioner", "Practitioner", "pr1", None) in rows
    assert ("organization", "Organization", "o1", "http://other.org/fhir/Organization/o1") in rows
    # Not covered by any parameter: an extension and a contained resource's extension.
    assert (None, "RelatedPerson", "rp1", None) in rows
    assert (None, "Location", "l1", None) in rows
    # Contained references are never rows; covered references do not repeat as param=None rows.
    assert all(row[2] != "c1" for row in rows)
    assert (None, "Practitioner", "pr1", None) not in rows


def test_canonical_references_become_urls():
    response = {"resourceType": "QuestionnaireResponse", "id": "qr", "status": "completed",
                "questionnaire": "http://example.org/Questionnaire/phq9"}
    assert by_param(extract_index(response).reference, "questionnaire") == [
        ("Questionnaire", "phq9", "http://example.org/Questionnaire/phq9")]


def test_no_duplicate_rows():
    patient = {**PATIENT, "name": [{"family": "Smith"}, {"family": "Smith"}],
               "identifier": [{"system": "s", "value": "1"}, {"system": "s", "value": "1"}]}
    rows = extract_index(patient)
    for table in rows.__slots__:
        values = getattr(rows, table)
        assert len(values) == len(set(values)), table


def test_malformed_values_are_skipped_not_raised():
    patient = {"resourceType": "Patient", "id": "x", "birthDate": "not-a-date", "name": "oops"}
    assert extract_index(patient).date == []


def test_unknown_resource_type_gets_common_rows_and_references():
    rows = extract_index({"resourceType": "Basicish", "meta": {"tag": [{"code": "t"}]},
                          "thing": {"reference": "Patient/1"}})
    assert rows.token == [("_tag", None, "t", None)]
    assert rows.reference == [(None, "Patient", "1", None)]


def test_extraction_is_fast_enough_for_every_create():
    search_parameters()
    extract_index(PATIENT)
    runs = 500
    started = time.perf_counter()
    for _ in range(runs):
        extract_index(PATIENT)
    per_call = (time.perf_counter() - started) / runs
    assert per_call < 0.002, f"{per_call * 1e3:.2f} ms per Patient"


def test_references_to_this_server_are_indexed_as_relative():
    task = {"resourceType": "Task", "id": "t", "status": "ready", "intent": "order",
            "for": {"reference": "http://test.local/fhir/Patient/p1"},
            "note": [{"authorReference": {"reference": "http://test.local/fhir/Practitioner/d1"}}]}
    rows = extract_index(task, base_url="http://test.local/fhir/").reference
    assert ("patient", "Patient", "p1", None) in rows and ("subject", "Patient", "p1", None) in rows
    assert (None, "Practitioner", "d1", None) in rows


def test_long_strings_are_cut_to_fit_the_index():
    document = {"resourceType": "DocumentReference", "id": "d", "status": "current", "content": [],
                "description": "é" * 5000}
    [(param, value, exact)] = extract_index(document).string
    assert len(value) == 512 and value == "e" * 512 and exact == "é" * 5000


def test_composite_components_share_an_element_key():
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                   "component": [
                       {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                       {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                        "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                       {"code": {"text": "no value: no composite rows"}}]}
    rows = extract_index(observation)
    codes = [(row[2], row[-1]) for row in rows.token if row[0] == "component-code-value-quantity$0"]
    values = [(row[1], row[-1]) for row in rows.quantity if row[0] == "component-code-value-quantity$1"]
    assert codes == [("8480-6", 0), ("8462-4", 1)]
    assert values == [(120, 0), (80, 1)]


def test_full_text_and_reference_identifiers():
    rows = extract_index({
        "resourceType": "Observation", "status": "final", "code": {"text": "Glucose"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Fasting &amp; "
                                               "<b>Glücose</b></div>"},
        "subject": {"identifier": {"system": "urn:mrn", "value": "7"}}})
    assert ("_text", "fasting & glucose") in rows.text
    assert ("_content", "final glucose urn:mrn 7") not in rows.text  # URIs are left out of _content
    assert ("_content", "final glucose 7") in rows.text
    assert ("subject:identifier", "urn:mrn", "7", None) in rows.token


def test_code_system_concepts_carry_their_ancestors():
    code_system = {"resourceType": "CodeSystem", "url": "http://cs", "status": "active", "content": "complete",
                   "concept": [{"code": "A", "concept": [{"code": "A1", "concept": [{"code": "A11"}]}]}]}
    assert sorted(row[2:] for row in extract_index(code_system).concept) == [
        ("A", "A"), ("A1", "A"), ("A1", "A1"), ("A11", "A"), ("A11", "A1"), ("A11", "A11")]
