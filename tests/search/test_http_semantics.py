"""Through HTTP: `:in`/`:not-in` over ValueSet compose, unknown value sets, canonical chains, decimal precision."""

import httpx
import pytest

from tests.search.test_http_filters import ids, put

CS = "http://example.org/cs-sem"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
VS = "http://example.org/vs/"


def _status(value: str) -> list[dict]:
    return [{"code": "status", "valueCode": value}]


CODE_SYSTEM = {
    "resourceType": "CodeSystem", "id": "cs-sem", "url": CS, "status": "active", "content": "complete",
    "concept": [
        {"code": "A", "property": _status("active"), "concept": [
            {"code": "A1", "property": _status("active"), "concept": [{"code": "A11", "property": _status("retired")}]},
            {"code": "A2", "property": _status("active")}]},
        {"code": "B", "property": _status("retired")},
        {"code": "C", "property": _status("active")},
    ],
}
OBSERVATIONS = {"o-a": (CS, "A"), "o-a1": (CS, "A1"), "o-a11": (CS, "A11"), "o-a2": (CS, "A2"), "o-b": (CS, "B"),
                "o-c": (CS, "C"), "o-loinc": (LOINC, "1234-5"), "o-sct1": (SCT, "111"), "o-sct2": (SCT, "222")}


def _filter(prop: str, op: str, value: str) -> dict:
    return {"system": CS, "filter": [{"property": prop, "op": op, "value": value}]}


VALUE_SETS = {
    "concepts": {"include": [{"system": LOINC, "concept": [{"code": "1234-5"}]},
                             {"system": CS, "concept": [{"code": "B"}]}]},
    "held-system": {"include": [{"system": CS}]},
    "unheld-system": {"include": [{"system": SCT}]},
    "is-a": {"include": [_filter("concept", "is-a", "A1")]},
    "descendent-of": {"include": [_filter("concept", "descendent-of", "A")]},
    "is-not-a": {"include": [_filter("concept", "is-not-a", "A")]},
    "generalizes": {"include": [_filter("concept", "generalizes", "A11")]},
    "equals": {"include": [_filter("status", "=", "retired")]},
    "in": {"include": [_filter("concept", "in", "A2,C")]},
    "regex": {"include": [_filter("code", "regex", "A[0-9]+")]},
    "two-filters": {"include": [{"system": CS, "filter": [{"property": "concept", "op": "is-a", "value": "A"},
                                                          {"property": "status", "op": "=", "value": "active"}]}]},
    "import": {"include": [{"valueSet": [VS + "descendent-of", VS + "is-a"]},
                           {"system": CS, "valueSet": [VS + "in"]}]},
    "exclude": {"include": [{"system": CS}],
                "exclude": [{"system": CS, "concept": [{"code": "A"}, {"code": "B"}]},
                            _filter("concept", "is-a", "A1")]},
    "exclude-unheld": {"include": [{"system": SCT}, {"system": LOINC}],
                       "exclude": [{"system": SCT, "concept": [{"code": "111"}]}]},
    "exclude-import": {"include": [{"valueSet": [VS + "held-system"]}],
                       "exclude": [{"valueSet": [VS + "descendent-of"]}]},
}

IN_CASES = [
    ("concepts", ["o-b", "o-loinc"]),
    ("held-system", ["o-a", "o-a1", "o-a11", "o-a2", "o-b", "o-c"]),
    ("unheld-system", ["o-sct1", "o-sct2"]),
    ("is-a", ["o-a1", "o-a11"]),
    ("descendent-of", ["o-a1", "o-a11", "o-a2"]),
    ("is-not-a", ["o-b", "o-c"]),
    ("generalizes", ["o-a", "o-a1", "o-a11"]),
    ("equals", ["o-a11", "o-b"]),
    ("in", ["o-a2", "o-c"]),
    ("regex", ["o-a1", "o-a11", "o-a2"]),
    ("two-filters", ["o-a", "o-a1", "o-a2"]),
    ("import", ["o-a1", "o-a11", "o-a2", "o-c"]),
    ("exclude", ["o-a2", "o-c"]),
    ("exclude-unheld", ["o-loinc", "o-sct2"]),
    ("exclude-import", ["o-a", "o-b", "o-c"]),
]


def _store_terminology(client: httpx.Client) -> None:
    put(client, CODE_SYSTEM)
    for name, compose in VALUE_SETS.items():
        put(client, {"resourceType": "ValueSet", "id": f"vs-{name}", "url": VS + name, "status": "active",
                     "compose": compose})
    for fhir_id, (system, code) in OBSERVATIONS.items():
        put(client, {"resourceType": "Observation", "id": fhir_id, "status": "final",
                     "code": {"coding": [{"system": system, "code": code}]}})


def test_in_and_not_in_expand_the_compose_of_stored_value_sets(client: httpx.Client) -> None:
    _store_terminology(client)
    for name, expected in IN_CASES:
        assert ids(client.get("/Observation", params={"code:in": VS + name, "_count": "50"})) == expected, name
        complement = sorted(set(OBSERVATIONS) - set(expected))
        assert ids(client.get("/Observation", params={"code:not-in": VS + name, "_count": "50"})) == complement, name
    # POST _search
    assert ids(client.post("/Observation/_search", data={"code:in": VS + "is-a"})) == ["o-a1", "o-a11"]


def test_expansions_follow_changes_to_value_sets_and_code_systems(client: httpx.Client) -> None:
    _store_terminology(client)
    assert ids(client.get("/Observation", params={"code:in": VS + "is-a"})) == ["o-a1", "o-a11"]
    put(client, {"resourceType": "ValueSet", "id": "vs-is-a", "url": VS + "is-a", "status": "active",
                 "compose": {"include": [_filter("concept", "is-a", "A")]}})
    assert ids(client.get("/Observation", params={"code:in": VS + "is-a"})) == ["o-a", "o-a1", "o-a11", "o-a2"]
    # A2 moves under B in the code system: the is-a expansion follows.
    moved = {**CODE_SYSTEM, "concept": [{"code": "A", "concept": [{"code": "A1", "concept": [{"code": "A11"}]}]},
                                        {"code": "B", "concept": [{"code": "A2"}]}, {"code": "C"}]}
    put(client, moved)
    assert ids(client.get("/Observation", params={"code:in": VS + "is-a"})) == ["o-a", "o-a1", "o-a11"]
    # Versions: `url|version` picks one.
    for version, code in (("1", "C"), ("2", "B")):
        put(client, {"resourceType": "ValueSet", "id": f"vs-ver-{version}", "url": VS + "ver", "version": version,
                     "status": "active", "compose": {"include": [{"system": CS, "concept": [{"code": code}]}]}})
    assert ids(client.get("/Observation", params={"code:in": VS + "ver|1"})) == ["o-c"]
    assert ids(client.get("/Observation", params={"code:in": VS + "ver|2"})) == ["o-b"]


@pytest.mark.parametrize("parameter, value, code, fragment", [
    ("code:in", "http://example.org/vs/nowhere", "not-found", "http://example.org/vs/nowhere"),
    ("code:not-in", "http://example.org/vs/nowhere", "not-found", "http://example.org/vs/nowhere"),
    ("code:in", VS + "ver|9", "not-found", VS + "ver|9"),
    ("code:in", VS + "filter-unheld", "not-supported", SCT),
    ("code:in", VS + "cycle", "invalid", "includes itself"),
])
def test_unusable_value_sets_are_a_400_naming_the_parameter(client: httpx.Client, parameter: str, value: str,
                                                            code: str, fragment: str) -> None:
    _store_terminology(client)
    put(client, {"resourceType": "ValueSet", "id": "vs-filter-unheld", "url": VS + "filter-unheld", "status": "active",
                 "compose": {"include": [{"system": SCT, "filter": [{"property": "concept", "op": "is-a",
                                                                     "value": "111"}]}]}})
    put(client, {"resourceType": "ValueSet", "id": "vs-cycle", "url": VS + "cycle", "status": "active",
                 "compose": {"include": [{"valueSet": [VS + "cycle"]}]}})
    for response in (client.get("/Observation", params={parameter: value}),
                     client.get("/Patient", params={f"_has:Observation:subject:{parameter}": value})):
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert issue["code"] == code
        assert parameter in issue["expression"][0] and fragment in issue["diagnostics"]


def test_chains_follow_canonical_references_by_url_and_version(client: httpx.Client) -> None:
    base = "http://example.org/Questionnaire/"
    put(client, {"resourceType": "Questionnaire", "id": "intake", "url": base + "intake", "version": "1",
                 "title": "Intake form", "status": "active"})
    put(client, {"resourceType": "Questionnaire", "id": "followup-2", "url": base + "followup", "version": "2",
                 "title": "Follow-up visit", "status": "active"})
    responses = {"qr-intake": base + "intake", "qr-followup-2": base + "followup|2",
                 "qr-followup-1": base + "followup|1", "qr-other": "http://elsewhere.org/Questionnaire/intake"}
    for fhir_id, canonical in responses.items():
        put(client, {"resourceType": "QuestionnaireResponse", "id": fhir_id, "status": "completed",
                     "questionnaire": canonical})
    cases = [
        ({"questionnaire.title": "intake"}, ["qr-intake"]),
        ({"questionnaire.title": "follow"}, ["qr-followup-2"]),
        ({"questionnaire:Questionnaire.version": "2"}, ["qr-followup-2"]),
        ({"questionnaire._id": "intake,followup-2"}, ["qr-followup-2", "qr-intake"]),
        ({"questionnaire.title": "nothing"}, []),
    ]
    for params, expected in cases:
        assert ids(client.get("/QuestionnaireResponse", params=params)) == expected, params
    assert ids(client.get("/Questionnaire", params={"_has:QuestionnaireResponse:questionnaire:status": "completed"})
               ) == ["followup-2", "intake"]  # and _has too (tests/search/test_canonical.py)


def _quantity_observation(fhir_id: str, value_text: str) -> bytes:
    return (b'{"resourceType":"Observation","id":"%s","status":"final","code":{"text":"weight"},'
            b'"valueQuantity":{"value":%s,"unit":"kg"},"component":[{"code":{"text":"x"},'
            b'"valueQuantity":{"value":1e2}}]}') % (fhir_id.encode(), value_text.encode())


def test_decimals_keep_their_written_precision(client: httpx.Client) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    for fhir_id, text in (("w150", "1.50"), ("w15", "1.5"), ("w1500", "1.500")):
        response = client.put(f"/Observation/{fhir_id}", content=_quantity_observation(fhir_id, text),
                              headers=headers)
        assert response.status_code == 201, response.text
        assert b'"value":%s,' % text.encode() in response.content
    read = client.get("/Observation/w150")
    assert b'"value":1.50,' in read.content and b'"value":1e2}' in read.content
    assert b"1.50" in client.get("/Observation/w150", params={"_pretty": "true"}).content
    elements = client.get("/Observation", params={"_id": "w150", "_elements": "valueQuantity"})
    assert b'"value":1.50' in elements.content
    # A patch elsewhere in the resource keeps the stored text.
    patched = client.patch("/Observation/w150", json=[{"op": "replace", "path": "/status", "value": "amended"}],
                           headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200, patched.text
    assert b'"value":1.50,' in patched.content
    # Search compares with the precision each value was written with (R4 implicit ranges).
    for value, expected in (("1.5", ["w15", "w150", "w1500"]), ("1.50", ["w150", "w1500"]), ("1.500", ["w1500"]),
                            ("1.5000", [])):
        assert ids(client.get("/Observation", params={"value-quantity": value})) == expected, value
    # 1e2 has one significant digit: it stands for [50, 150), within what `1e2` searches, not `100`.
    assert ids(client.get("/Observation", params={"component-value-quantity": "1e2"})) == ["w15", "w150", "w1500"]
    assert ids(client.get("/Observation", params={"component-value-quantity": "100"})) == []
