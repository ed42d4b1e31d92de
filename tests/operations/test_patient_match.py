"""Patient/$match: golden cases of tricky duplicates, graded and explained, and the instance-level GET."""

import random
from datetime import date, timedelta

import httpx
import pytest

from fhir_server.identity import match_rules as rules
from fhir_server.identity import matching

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


# A surname shared by hundreds: three hundred Müllers, all with a given name of the duplicate's initial (sixty
# of them José, like the duplicate) and birth dates nowhere near its own, stored before it.
CROWD_SIZE = 300
DUPLICATE = patient("Müller", "José", "1990-07-21", gender="male", telecom=phone("+1 617 555 0142"))


def crowd_member(n: int, rng: random.Random) -> dict:
    while True:
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(80 * 365))
        if matching.compare(matching.features(patient("Müller", "José", birth.isoformat())),
                            matching.features(DUPLICATE)).levels["birthDate"] == "disagree":
            break
    given = ("José", "Jürgen", "Johanna", "Jonas", "Julia")[n % 5]
    return patient("Müller", given, birth.isoformat(), gender=("male", "female")[n % 2])


@pytest.fixture
def crowd(client: httpx.Client) -> dict[str, dict]:
    """The stored crowd and, last, its duplicate: Patient id → body."""
    rng = random.Random(5)
    bodies = [crowd_member(n, rng) for n in range(CROWD_SIZE)] + [DUPLICATE]
    response = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Patient"}} for body in bodies]})
    assert response.status_code == 200, response.text
    ids = [entry["response"]["location"].split("Patient/")[1].split("/")[0] for entry in response.json()["entry"]]
    return dict(zip(ids, bodies))


# (name, query Patient, grade of the duplicate): typed at a desk, with the mistakes people make.
COMMON_SURNAME = [
    ("one digit off in the birth date", patient("MULLER", "Jose", "1990-07-24", gender="male"), "probable"),
    ("nickname and one digit off", patient("Müller", "Pepe", "1990-07-28", gender="male"), "probable"),
    ("transposed letters in the family name", patient("Mülelr", "José", "1990-07-21", gender="male"), "probable"),
    ("accents left out, same phone", patient("MULLER", "JOSE", "1990-07-21", gender="male",
                                             telecom=phone("(617) 555-0142")), "certain"),
    ("spelt as it sounds, one digit off", patient("Mueller", "José", "1990-07-20", gender="male"), "possible"),
]


def graded_by_scoring_everyone(crowd: dict[str, dict], query: dict) -> dict[str, str]:
    """What $match must answer if blocking loses nothing: every stored Patient the scorer grades, by id."""
    wanted = matching.features(query)
    return {fhir_id: result.grade for fhir_id, body in crowd.items()
            if (result := matching.compare(wanted, matching.features(body))).grade != "none"}


@pytest.mark.parametrize("name, query, expected_grade", COMMON_SURNAME, ids=[case[0] for case in COMMON_SURNAME])
def test_duplicate_with_a_common_surname(client: httpx.Client, crowd: dict[str, dict], name, query,
                                         expected_grade) -> None:
    entries = run_match(client, query, count=100)["entry"]
    duplicate_id = list(crowd)[-1]
    assert entries[0]["resource"]["id"] == duplicate_id
    assert grade(entries[0]) == expected_grade
    # The namesakes born on other days are not offered as duplicates.
    assert [entry["resource"]["id"] for entry in entries if grade(entry) != "certainly-not"] == [duplicate_id]
    assert {entry["resource"]["id"]: grade(entry) for entry in entries} == graded_by_scoring_everyone(crowd, query)


def test_name_only_in_a_crowd(client: httpx.Client, crowd: dict[str, dict]) -> None:
    """Without a birth date every José Müller is a possible duplicate: all of them, none left out."""
    query = patient("Müller", "José")
    expected = graded_by_scoring_everyone(crowd, query)
    assert len(expected) == CROWD_SIZE // 5 + 1 and set(expected.values()) == {"possible"}
    entries = run_match(client, query, count=100)["entry"]
    assert {entry["resource"]["id"]: grade(entry) for entry in entries} == expected


def test_a_far_birth_date_rules_out_a_candidate_without_shared_contact() -> None:
    """Blocking keeps a surname's block small by leaving out birth dates that disagree: by the configured
    weights, no agreement of names, gender and address lifts such a candidate to `possible`."""
    weights = rules.WEIGHTS
    best = (rules.PRIOR + weights["birthDate"]["disagree"] + max(weights["gender"].values())
            + max(weights["address"].values()) + max(max(weights["family"].values()) + max(weights["given"].values()),
                                                     weights["name"]["swapped"]))
    assert 1 / (1 + 2 ** -best) < rules.THRESHOLDS["possible"]
    assert all(weight <= 0 for field in ("phone", "email") for level, weight in weights[field].items()
               if level != "exact")
