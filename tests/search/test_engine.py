from datetime import datetime, timedelta, timezone

import pytest
from urllib.parse import parse_qsl, urlsplit

from fhir_server.errors import FHIRError
from fhir_server.search.engine import find_matches, search
from tests.search.conftest import BASE
from tests.search.helpers import follow, ids, link, match_ids, run


def patient(fhir_id, **fields):
    return {"resourceType": "Patient", "id": fhir_id, **fields}


@pytest.fixture
def patients(store):
    store(
        patient("ann", name=[{"family": "Smith", "given": ["Ann"]}], gender="female", birthDate="1970-02-03",
                identifier=[{"system": "urn:mrn", "value": "100"}],
                telecom=[{"system": "phone", "value": "555-0100"}],
                meta={"lastUpdated": "2024-01-01T10:00:00Z", "profile": ["http://example.org/StructureDefinition/a"],
                      "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "Very Important"}]},
                generalPractitioner=[{"reference": "Practitioner/doc1"}]),
        patient("bob", name=[{"family": "Smyth", "given": ["Bob"]}], gender="male", birthDate="1980",
                identifier=[{"system": "urn:other", "value": "100"}],
                meta={"lastUpdated": "2024-02-01T10:00:00Z"},
                generalPractitioner=[{"reference": "http://other.org/fhir/Practitioner/doc1"}]),
        patient("cleo", name=[{"family": "Müller", "given": ["Cléo"]}], gender="female", birthDate="1975-06",
                identifier=[{"value": "200"}], meta={"lastUpdated": "2024-03-01T10:00:00Z"},
                generalPractitioner=[{"reference": "Organization/doc1"}]),
        patient("dan", gender="unknown", meta={"lastUpdated": "2024-04-01T10:00:00Z"}),
    )


async def test_string_default_is_case_and_accent_insensitive_starts_with(aconn, patients):
    assert sorted(await ids(aconn, "Patient", "family=sm")) == ["ann", "bob"]
    assert await ids(aconn, "Patient", "family=MULL") == ["cleo"]
    assert await ids(aconn, "Patient", "given=cleo") == ["cleo"]
    assert await ids(aconn, "Patient", "family=mith") == []


async def test_string_exact_and_contains(aconn, patients):
    assert await ids(aconn, "Patient", "family:exact=Smith") == ["ann"]
    assert await ids(aconn, "Patient", "family:exact=smith") == []
    assert await ids(aconn, "Patient", "family:contains=MIT") == ["ann"]
    assert await ids(aconn, "Patient", "name:contains=ll") == ["cleo"]


async def test_string_wildcards_are_literal(aconn, patients):
    assert await ids(aconn, "Patient", "family=%25") == []
    assert await ids(aconn, "Patient", "family=_") == []


async def test_token_forms(aconn, patients):
    assert sorted(await ids(aconn, "Patient", "identifier=100")) == ["ann", "bob"]
    assert await ids(aconn, "Patient", "identifier=urn:mrn|100") == ["ann"]
    assert await ids(aconn, "Patient", "identifier=|200") == ["cleo"]
    assert await ids(aconn, "Patient", "identifier=|100") == []
    assert await ids(aconn, "Patient", "identifier=urn:other|") == ["bob"]
    assert sorted(await ids(aconn, "Patient", "gender:not=female")) == ["bob", "dan"]
    assert await ids(aconn, "Patient", "_tag:text=very") == ["ann"]
    assert await ids(aconn, "Patient", "_tag=http://example.org/tags|vip") == ["ann"]


async def test_token_escaped_separators(aconn, store):
    store(patient("e", identifier=[{"system": "urn:s", "value": "a|b,c"}]))
    assert await ids(aconn, "Patient", r"identifier=urn:s|a\|b\,c") == ["e"]


async def test_reference_forms(aconn, patients):
    # `Type/id` means a resource on this server; bob's doctor lives elsewhere.
    assert await ids(aconn, "Patient", "general-practitioner=Practitioner/doc1") == ["ann"]
    assert await ids(aconn, "Patient", f"general-practitioner={BASE}/Practitioner/doc1") == ["ann"]
    assert await ids(aconn, "Patient", "general-practitioner=http://other.org/fhir/Practitioner/doc1") == ["bob"]
    assert await ids(aconn, "Patient", "general-practitioner:Organization=doc1") == ["cleo"]
    # A bare id matches any local target type when the parameter allows several.
    assert sorted(await ids(aconn, "Patient", "general-practitioner=doc1")) == ["ann", "cleo"]


async def test_date_prefixes_use_precision_ranges(aconn, patients):
    # ann 1970-02-03, bob 1980 (whole year), cleo 1975-06 (whole month)
    assert await ids(aconn, "Patient", "birthdate=1970-02-03") == ["ann"]
    assert await ids(aconn, "Patient", "birthdate=1970") == ["ann"]
    assert await ids(aconn, "Patient", "birthdate=1980-05-05") == []  # 1980 is wider than the day
    assert await ids(aconn, "Patient", "birthdate=eq1975-06") == ["cleo"]
    assert sorted(await ids(aconn, "Patient", "birthdate=ne1970")) == ["bob", "cleo"]
    assert sorted(await ids(aconn, "Patient", "birthdate=gt1975-06-15")) == ["bob", "cleo"]
    assert sorted(await ids(aconn, "Patient", "birthdate=ge1975-06")) == ["bob", "cleo"]
    assert await ids(aconn, "Patient", "birthdate=lt1975-06-01") == ["ann"]
    assert sorted(await ids(aconn, "Patient", "birthdate=le1975-06")) == ["ann", "cleo"]
    assert await ids(aconn, "Patient", "birthdate=sa1975-06-15") == ["bob"]
    assert await ids(aconn, "Patient", "birthdate=eb1975-06-15") == ["ann"]
    # ap widens the range by 10% of its distance from now.
    assert sorted(await ids(aconn, "Patient", "birthdate=ap1970-02-10")) == ["ann", "cleo"]
    assert await ids(aconn, "Patient", "birthdate=ap1990") == []
    assert sorted(await ids(aconn, "Patient", "birthdate=ge1975&birthdate=lt1981")) == ["bob", "cleo"]
    assert await ids(aconn, "Patient", "birthdate=ge1975-06-02,lt1970-03&birthdate=le1975-06-01") == ["ann"]


async def test_repeated_dates_of_one_period_match_it_together_or_apart(aconn, store):
    """Repeated values of a one-row date parameter are checked on that row (query._same_row_dates): a
    Period reaching into two spans that do not meet matches both, one between them neither."""
    store({"resourceType": "Encounter", "id": "long", "status": "finished", "class": {"code": "IMP"},
           "period": {"start": "1990-01-01", "end": "2020-12-31"}},
          {"resourceType": "Encounter", "id": "short", "status": "finished", "class": {"code": "IMP"},
           "period": {"start": "2004-01-01", "end": "2004-02-01"}})
    assert await ids(aconn, "Encounter", "date=lt2000&date=gt2010") == ["long"]
    assert sorted(await ids(aconn, "Encounter", "date=ge2004-01-15&date=le2004-01-20")) == ["long", "short"]
    assert await ids(aconn, "Encounter", "date=sa2003&date=eb2005") == ["short"]
    assert await ids(aconn, "Encounter", "date=eq2004-01&date=eq2004-02") == []


async def test_date_time_with_zone(aconn, store):
    store({"resourceType": "Communication", "id": "c", "status": "completed", "sent": "2024-05-01T23:30:00-02:00"})
    assert await ids(aconn, "Communication", "sent=2024-05-02") == ["c"]  # 01:30 UTC next day
    assert await ids(aconn, "Communication", "sent=2024-05-01T23:30:00-02:00") == ["c"]
    assert await ids(aconn, "Communication", "sent=lt2024-05-02T01:30:00Z") == []
    assert await ids(aconn, "Communication", "sent=le2024-05-02T01:30:00Z") == ["c"]


async def test_last_updated_and_id(aconn, patients):
    assert sorted(await ids(aconn, "Patient", "_lastUpdated=ge2024-03-01")) == ["cleo", "dan"]
    assert await ids(aconn, "Patient", "_lastUpdated=2024-02") == ["bob"]
    assert sorted(await ids(aconn, "Patient", "_id=ann,dan")) == ["ann", "dan"]


async def test_number_and_quantity(aconn, store):
    store({"resourceType": "RiskAssessment", "id": "r1", "status": "final", "prediction": [{"probabilityDecimal": 0.2}]},
          {"resourceType": "RiskAssessment", "id": "r2", "status": "final", "prediction": [{"probabilityDecimal": 0.81}]},
          {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "w"},
           "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
          {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "w"},
           "valueQuantity": {"value": 154, "unit": "lb", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}})
    assert await ids(aconn, "RiskAssessment", "probability=0.2") == ["r1"]
    assert await ids(aconn, "RiskAssessment", "probability=0.8") == ["r2"]  # 0.81 is within [0.75, 0.85)
    assert await ids(aconn, "RiskAssessment", "probability=0.80") == []
    assert await ids(aconn, "RiskAssessment", "probability=gt0.5") == ["r2"]
    assert sorted(await ids(aconn, "RiskAssessment", "probability=le0.81")) == ["r1", "r2"]
    assert await ids(aconn, "RiskAssessment", "probability=ap0.21") == ["r1"]
    assert await ids(aconn, "Observation", "value-quantity=70") == ["o1"]
    # UCUM units compare in canonical units: 70 kg is about 154 lb.
    assert sorted(await ids(aconn, "Observation", "value-quantity=gt100|http://unitsofmeasure.org|[lb_av]")) == [
        "o1", "o2"]
    # Stored precision counts: 70 kg stands for [69.5, 70.5) kg, 154 lb for about [69.63, 70.08) kg.
    assert await ids(aconn, "Observation", "value-quantity=gt70600|http://unitsofmeasure.org|g") == []
    assert await ids(aconn, "Observation", "value-quantity=gt70100|http://unitsofmeasure.org|g") == ["o1"]
    assert await ids(aconn, "Observation", "value-quantity=gt50||kg") == ["o1"]
    assert await ids(aconn, "Observation", "value-quantity=gt50||lb") == ["o2"]  # matches the unit text
    assert await ids(aconn, "Observation", "value-quantity=lt100|http://unitsofmeasure.org|[lb_av]") == []


async def test_uri(aconn, patients):
    assert await ids(aconn, "Patient", "_profile=http://example.org/StructureDefinition/a") == ["ann"]
    assert await ids(aconn, "Patient", "_profile=http://example.org/StructureDefinition") == []
    assert await ids(aconn, "Patient", "_profile:below=http://example.org/") == ["ann"]
    assert await ids(aconn, "Patient", "_profile:above=http://example.org/StructureDefinition/a/x") == ["ann"]


async def test_missing(aconn, patients):
    assert await ids(aconn, "Patient", "birthdate:missing=true") == ["dan"]
    assert sorted(await ids(aconn, "Patient", "family:missing=false")) == ["ann", "bob", "cleo"]
    assert await ids(aconn, "Patient", "identifier:missing=true&gender=unknown") == ["dan"]


async def test_or_within_a_parameter_and_across_repeats(aconn, patients):
    assert sorted(await ids(aconn, "Patient", "family=smith,müller")) == ["ann", "cleo"]
    assert await ids(aconn, "Patient", "family=sm&gender=male") == ["bob"]
    assert await ids(aconn, "Patient", "family=sm&family=smy") == ["bob"]


async def test_deleted_resources_never_match(aconn, patients, db):
    # As the delete statement leaves the row, but with its index rows left behind: still no match.
    db.execute("UPDATE resource SET deleted = true, content = NULL WHERE fhir_id = 'ann'")
    assert await ids(aconn, "Patient", "family=smith") == []


async def test_sorting(aconn, patients):
    assert await ids(aconn, "Patient", "_sort=family") == ["cleo", "ann", "bob", "dan"]  # missing last
    assert await ids(aconn, "Patient", "_sort=-family") == ["bob", "ann", "cleo", "dan"]
    assert await ids(aconn, "Patient", "_sort=birthdate") == ["ann", "cleo", "bob", "dan"]
    assert await ids(aconn, "Patient", "_sort=-birthdate") == ["bob", "cleo", "ann", "dan"]
    assert await ids(aconn, "Patient", "_sort=gender&gender=female,male") == ["ann", "cleo", "bob"]
    assert await ids(aconn, "Patient", "_sort=-_id") == ["dan", "cleo", "bob", "ann"]
    assert await ids(aconn, "Patient", "_sort=-_lastUpdated") == ["dan", "cleo", "bob", "ann"]


async def test_sort_by_number(aconn, store):
    store(*[{"resourceType": "RiskAssessment", "id": f"r{i}", "status": "final",
             "prediction": [{"probabilityDecimal": p}]} for i, p in enumerate([0.5, 0.1, 0.9])])
    assert await ids(aconn, "RiskAssessment", "_sort=probability") == ["r1", "r0", "r2"]


def _families():
    return ["Adams", "Baker", "Clark", "Davis", "Evans", "Fox", "Green"]


@pytest.mark.parametrize("sort", ["", "_sort=family&", "_sort=-family&", "_sort=birthdate&", "_sort=-_lastUpdated&"])
async def test_paging_never_skips_or_repeats_while_resources_are_added(aconn, store, sort):
    store(*[patient(f"p{i}", name=[{"family": family}], birthDate=f"19{50 + i}") for i, family in
            enumerate(_families())])
    seen: list[str] = []
    found = await run(aconn, "Patient", sort + "_count=3")
    extra = 0
    while True:
        seen.extend(match_ids(found))
        # Others write between page requests; some sort before the cursor, some after it.
        store(patient(f"new{extra}", name=[{"family": "Aaron" if extra % 2 else "Zed"}], birthDate="1940"))
        extra += 1
        next_url = link(found, "next")
        if next_url is None:
            break
        found = await follow(aconn, next_url)
    assert len(seen) == len(set(seen)), seen
    assert {f"p{i}" for i in range(7)} <= set(seen)


async def test_previous_links_walk_back(aconn, store):
    store(*[patient(f"p{i}", name=[{"family": family}]) for i, family in enumerate(_families())])
    first = await run(aconn, "Patient", "_sort=family&_count=3")
    assert link(first, "previous") is None
    second = await follow(aconn, link(first, "next"))
    third = await follow(aconn, link(second, "next"))
    assert match_ids(third) == ["p6"] and link(third, "next") is None
    back = await follow(aconn, link(third, "previous"))
    assert match_ids(back) == match_ids(second) == ["p3", "p4", "p5"]
    back_again = await follow(aconn, link(back, "previous"))
    assert match_ids(back_again) == ["p0", "p1", "p2"]
    assert link(back_again, "previous") is None
    assert match_ids(await follow(aconn, link(back_again, "next"))) == ["p3", "p4", "p5"]


async def test_links_are_built_from_the_base_url(aconn, patients):
    found = await run(aconn, "Patient", "family=sm&_count=1&_format=json")
    assert link(found, "self") == f"{BASE}/Patient?family=sm&_count=1"
    assert link(found, "next").startswith(f"{BASE}/Patient?family=sm&_count=1&_page_token=")
    assert found["entry"][0]["fullUrl"] == f"{BASE}/Patient/ann"


async def test_tampered_or_foreign_page_tokens_are_rejected(aconn, patients):
    found = await run(aconn, "Patient", "_count=1")
    token = dict(parse_qsl(urlsplit(link(found, "next")).query))["_page_token"]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for query in (f"_count=1&_page_token={tampered}", f"_count=1&_page_token=garbage",
                  f"_count=1&family=sm&_page_token={token}"):
        with pytest.raises(FHIRError) as error:
            await run(aconn, "Patient", query)
        assert error.value.status == 400
        assert error.value.issues[0].expression == ("_page_token",)


async def test_count_is_capped(aconn, patients, monkeypatch):
    from fhir_server.settings import get_settings
    monkeypatch.setattr(get_settings(), "max_page_size", 2)
    assert len(await ids(aconn, "Patient", "_count=50")) == 2
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_count=-1")


async def test_summary_count_and_totals(aconn, patients):
    counted = await run(aconn, "Patient", "gender=female&_summary=count")
    assert counted["total"] == 2 and "entry" not in counted
    paged = await run(aconn, "Patient", "_count=1")
    assert "total" not in paged
    assert (await run(aconn, "Patient", "_count=1&_total=accurate"))["total"] == 4
    assert "total" not in await run(aconn, "Patient", "_total=none")
    assert isinstance((await run(aconn, "Patient", "_count=1&_total=estimate"))["total"], int)
    assert (await run(aconn, "Patient", "family=sm"))["total"] == 2  # one page holds everything
    assert "total" not in await run(aconn, "Patient", "_count=0")
    assert (await run(aconn, "Patient", "_count=0&_total=accurate"))["total"] == 4


async def test_unknown_parameters_strict_and_lenient(aconn, patients):
    with pytest.raises(FHIRError) as error:
        await run(aconn, "Patient", "family=sm&nonsense=1", strict=True)
    assert error.value.status == 400 and "nonsense" in error.value.issues[0].diagnostics
    found = await run(aconn, "Patient", "family=sm&nonsense=1&family:fuzzy=x", strict=False)
    assert link(found, "self") == f"{BASE}/Patient?family=sm"
    outcome = found["entry"][0]
    assert outcome["search"]["mode"] == "outcome"
    assert [issue["expression"] for issue in outcome["resource"]["issue"]] == [["nonsense"], ["family:fuzzy"]]
    assert all(issue["severity"] == "warning" for issue in outcome["resource"]["issue"])
    assert sorted(match_ids(found)) == ["ann", "bob"]


@pytest.mark.parametrize("query", ["birthdate=>2000", "birthdate=2000-13-01", "birthdate=xx2000", "birthdate=",
                                   "_lastUpdated=yesterday", "probability=abc", "birthdate:missing=maybe",
                                   "_count=ten", "_total=some", "_summary=maybe"])
async def test_malformed_values_are_400_naming_the_parameter(aconn, query):
    resource_type = "RiskAssessment" if query.startswith("probability") else "Patient"
    with pytest.raises(FHIRError) as error:
        await run(aconn, resource_type, query, strict=False)
    assert error.value.status == 400
    assert query.split("=")[0] in error.value.issues[0].diagnostics


async def test_unsupported_sort_strict_and_lenient(aconn, patients):
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_sort=general-practitioner")
    found = await run(aconn, "Patient", "_sort=family,general-practitioner", strict=False)
    assert found["entry"][0]["search"]["mode"] == "outcome"
    assert "_sort" not in link(found, "self")


async def test_elements_and_summary_data(aconn, patients):
    found = await run(aconn, "Patient", "_id=ann&_elements=gender")
    resource = found["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert any(tag["code"] == "SUBSETTED" for tag in resource["meta"]["tag"])
    assert "name" in (await run(aconn, "Patient", "_id=ann&_summary=data"))["entry"][0]["resource"]


async def test_system_search_uses_common_parameters(aconn, patients, store):
    store({"resourceType": "Task", "id": "t1", "status": "ready", "intent": "order",
           "meta": {"tag": [{"system": "http://example.org/tags", "code": "vip"}]}})
    found = await run(aconn, None, "_tag=vip&_sort=_id")
    assert [entry["fullUrl"] for entry in found["entry"]] == [f"{BASE}/Patient/ann", f"{BASE}/Task/t1"]
    with pytest.raises(FHIRError):
        await run(aconn, None, "family=smith")


async def test_search_returns_bytes_with_stored_resources_spliced(aconn, patients):
    raw = await search(aconn, base_url=BASE + "/", resource_type="Patient", query=[("_id", "ann")], strict=True)
    assert isinstance(raw, bytes) and b'"fullUrl":"http://test.local/fhir/Patient/ann"' in raw


async def test_find_matches(aconn, patients, db):
    matches = await find_matches(aconn, "Patient", [("identifier", "urn:mrn|100")])
    ann_id = db.execute("SELECT id FROM resource WHERE fhir_id = 'ann'").fetchone()[0]
    assert matches == [(ann_id, "ann", 1)]
    assert len(await find_matches(aconn, "Patient", [("identifier", "100")])) == 2
    assert len(await find_matches(aconn, "Patient", [("gender", "female,male,unknown")], limit=3)) == 3
    assert await find_matches(aconn, "Patient", [("family", "nobody")]) == []
    with pytest.raises(FHIRError) as error:
        await find_matches(aconn, "Patient", [("nonsense", "1")])
    assert error.value.status == 400


async def test_long_strings_are_stored_and_found(aconn, store):
    store({"resourceType": "DocumentReference", "id": "long", "status": "current", "content": [],
           "description": "Discharge summary " + "x" * 5000})
    assert await ids(aconn, "DocumentReference", "description=discharge sum") == ["long"]
