"""Patient/$match: golden cases of tricky duplicates, graded and explained, and the instance-level GET."""

import httpx
import pytest

SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient(family: str, given: str, birth: str | None = None, **extra) -> dict:
    body = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], **extra}
    if birth:
        body["birthDate"] = birth
    return body


def phone(value: str) -> list[dict]:
    return [{"system": "phone", "value": value}]


STORED = {
    "smith": patient("Smith", "William", "1980-03-04", gender="male", telecom=[
        {"system": "phone", "value": "(617) 555-0101"}, {"system": "email", "value": "w.smith@example.org"}]),
    "ssn": patient("Okafor", "Chidi", "1975-11-30", gender="male",
                   identifier=[{"system": SSN, "value": "123-45-6789"}]),
    "muller": patient("Müller", "José", "1990-07-21", gender="male",
                      address=[{"line": ["12 Main Street"], "postalCode": "02139"}]),
    "johnson": patient("Johnson", "Katherine", "1988-01-15", gender="female"),
    "zhang": patient("Zhang", "Wei", "1992-05-06", gender="female"),
    "garcia": patient("Garcia", "Maria", "1970-09-09", gender="female", telecom=phone("+1 617-555-0199")),
    "twin": patient("Nguyen", "Anh", "2001-02-20", gender="female", telecom=phone("617-555-0177"),
                    address=[{"line": ["5 Elm St"], "postalCode": "02144"}]),
    "lee": patient("Lee", "Daniel", "1960-12-01", gender="male", identifier=[{"system": SSN, "value": "999-00-1111"}]),
    "other": patient("Brown", "Olivia", "1999-06-06", gender="female"),
}

# (name, query Patient, stored key expected first, its grade; None: nothing matches)
GOLDEN = [
    ("exact duplicate with phone", patient("Smith", "William", "1980-03-04", telecom=phone("617.555.0101")),
     "smith", "certain"),
    ("same identifier, other name", patient("Okafor-Bello", "C", identifier=[{"system": SSN, "value": "123-45-6789"}]),
     "ssn", "certain"),
    ("nickname, day and month transposed, same email",
     patient("SMITH", "Bill", "1980-04-03", telecom=[{"system": "email", "value": "W.Smith@example.org"}]),
     "smith", "probable"),
    ("case and accents, street written out", patient("MULLER", "jose", "1990-07-21", gender="male",
                                                     address=[{"line": ["12 main st"], "postalCode": "02139"}]),
     "muller", "certain"),
    ("transposed letters in the family name", patient("Jonhson", "Katherine", "1988-01-15", gender="female"),
     "johnson", "probable"),
    ("family and given swapped", patient("Wei", "Zhang", "1992-05-06", gender="female"), "zhang", "probable"),
    ("year off by one, phone in another format",
     patient("Garcia", "Maria", "1971-09-09", gender="female", telecom=phone("(617) 555-0199")), "garcia", "probable"),
    ("twin: same household, other given name",
     patient("Nguyen", "Binh", "2001-02-20", gender="female", telecom=phone("617-555-0177"),
             address=[{"line": ["5 Elm Street"], "postalCode": "02144"}]), "twin", "possible"),
    ("name only", patient("Brown", "Olivia"), "other", "possible"),
    ("same name, other birth date", patient("Brown", "Olivia", "1950-01-01", gender="female"), None, None),
    ("other SSN: known to be someone else", patient("Lee", "Daniel", "1960-12-01", gender="male",
                                                   identifier=[{"system": SSN, "value": "555-55-5555"}]),
     "lee", "certainly-not"),
]


@pytest.fixture
def stored(client: httpx.Client) -> dict[str, str]:
    ids = {}
    for key, body in STORED.items():
        response = client.post("/Patient", json=body)
        assert response.status_code == 201, response.text
        ids[key] = response.json()["id"]
    return ids


def run_match(client: httpx.Client, resource: dict, **inputs) -> dict:
    parameters = [{"name": "resource", "resource": resource}]
    for name, value in inputs.items():
        parameters.append({"name": name, ("valueBoolean" if isinstance(value, bool) else "valueInteger"): value})
    response = client.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": parameters})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "searchset"
    return bundle


def grade(entry: dict) -> str:
    return next(extension["valueCode"] for extension in entry["search"]["extension"]
                if extension["url"] == "http://hl7.org/fhir/StructureDefinition/match-grade")


@pytest.mark.parametrize("name, query, expected, expected_grade", GOLDEN, ids=[case[0] for case in GOLDEN])
def test_golden_matches(client: httpx.Client, stored: dict[str, str], name, query, expected, expected_grade) -> None:
    entries = run_match(client, query).get("entry", [])
    if expected is None:
        assert [grade(entry) for entry in entries if grade(entry) != "certainly-not"] == []
        return
    assert entries, name
    first = entries[0]
    assert first["resource"]["id"] == stored[expected]
    assert grade(first) == expected_grade
    assert first["search"]["mode"] == "match"
    assert 0 <= first["search"]["score"] <= 1
    scores = [entry["search"]["score"] for entry in entries]
    assert scores == sorted(scores, reverse=True)


def test_explanation_lists_matched_fields(client: httpx.Client, stored: dict[str, str]) -> None:
    entry = run_match(client, GOLDEN[2][1])["entry"][0]
    explanation = next(extension for extension in entry["search"]["extension"]
                       if extension["url"] == "urn:fhir-server:extension:match-explanation")
    fields = {part["extension"][0]["valueString"]: part["extension"][1]["valueCode"]
              for part in explanation["extension"] if part["url"] == "field"}
    assert fields == {"family": "exact", "given": "nickname", "birthDate": "transposed", "email": "exact"}


def test_only_certain_matches_and_count(client: httpx.Client, stored: dict[str, str]) -> None:
    probable_only = GOLDEN[2][1]
    assert run_match(client, probable_only, onlyCertainMatches=True).get("entry") is None
    assert len(run_match(client, patient("Smith", "William", "1980-03-04"), count=1)["entry"]) == 1


def test_no_match_gives_an_empty_bundle(client: httpx.Client, stored: dict[str, str]) -> None:
    bundle = run_match(client, patient("Zzyzx", "Quentin", "1901-01-01"))
    assert bundle["total"] == 0 and "entry" not in bundle


def test_instance_match_finds_duplicates_but_not_itself(client: httpx.Client, stored: dict[str, str]) -> None:
    duplicate = client.post("/Patient", json=patient("Smyth", "Bill", "1980-03-04", gender="male",
                                                     telecom=phone("+16175550101"))).json()
    bundle = client.get(f"/Patient/{stored['smith']}/$match").json()
    ids = [entry["resource"]["id"] for entry in bundle["entry"]]
    assert ids[0] == duplicate["id"] and stored["smith"] not in ids


def test_match_needs_a_patient(client: httpx.Client) -> None:
    empty = client.post("/Patient/$match", json={"resourceType": "Parameters", "parameter": []})
    assert empty.status_code == 400
    assert client.post("/Observation/$match", json={"resourceType": "Parameters"}).status_code == 404
