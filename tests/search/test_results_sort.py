"""_sort on several keys, ascending and descending, with keyset paging that neither skips nor repeats."""

import random
from functools import cmp_to_key

import pytest

from fhir_server.errors import FHIRError
from fhir_server.search.values import date_range, normalize_string
from tests.search.helpers import follow, ids, link, match_ids, run


def patient(fhir_id, family=None, birth=None, gender=None, updated=None):
    resource = {"resourceType": "Patient", "id": fhir_id}
    if family:
        resource["name"] = [{"family": family}]
    if birth:
        resource["birthDate"] = birth
    if gender:
        resource["gender"] = gender
    if updated:
        resource["meta"] = {"lastUpdated": updated}
    return resource


@pytest.fixture
def people(store):
    store(patient("a", "Smith", "1970", "female", "2024-01-05T00:00:00Z"),
          patient("b", "Smith", "1980", "male", "2024-01-04T00:00:00Z"),
          patient("c", "Jones", "1980", "female", "2024-01-03T00:00:00Z"),
          patient("d", "Jones", None, "male", "2024-01-02T00:00:00Z"),
          patient("e", None, "1975", "female", "2024-01-01T00:00:00Z"),
          patient("f", "Smith", "1980", None, "2024-01-01T00:00:00Z"))


async def walk(aconn, resource_type, query, count):
    """Every match of `query`, following `next` links with `count` per page."""
    found = await run(aconn, resource_type, f"{query}&_count={count}")
    seen = match_ids(found)
    while next_url := link(found, "next"):
        found = await follow(aconn, next_url)
        seen += match_ids(found)
    return seen


async def walk_back(aconn, resource_type, query, count):
    """Every match, reached by walking to the last page and back through `previous` links."""
    found = await run(aconn, resource_type, f"{query}&_count={count}")
    while next_url := link(found, "next"):
        found = await follow(aconn, next_url)
    pages = [match_ids(found)]
    while previous := link(found, "previous"):
        found = await follow(aconn, previous)
        pages.insert(0, match_ids(found))
    return [fhir_id for each in pages for fhir_id in each]


@pytest.mark.parametrize(("query", "expected"), [
    ("_sort=family,birthdate", ["c", "d", "a", "b", "f", "e"]),  # missing keys last
    ("_sort=family,-birthdate", ["c", "d", "f", "b", "a", "e"]),  # ties on id follow the last key
    ("_sort=-family,birthdate", ["a", "b", "f", "c", "d", "e"]),
    ("_sort=-family,-birthdate,-_id", ["f", "b", "a", "c", "d", "e"]),
    ("_sort=gender,-_lastUpdated", ["a", "c", "e", "b", "d", "f"]),
    ("_sort=birthdate,family,_id", ["a", "e", "c", "b", "f", "d"]),
    ("_sort=-_lastUpdated,_id", ["a", "b", "c", "d", "e", "f"]),
    ("_sort=_lastUpdated,-_id", ["f", "e", "d", "c", "b", "a"]),
    # One key: the page walks the index rows in key order (engine._page_rows_in_key_order).
    ("_sort=family", ["c", "d", "a", "b", "f", "e"]),
    ("_sort=-family", ["f", "b", "a", "d", "c", "e"]),
    ("_sort=birthdate", ["a", "e", "b", "c", "f", "d"]),
])
async def test_several_keys_in_one_page_and_across_pages(aconn, people, query, expected):
    assert await ids(aconn, "Patient", query) == expected
    for count in (1, 2, 4):
        assert await walk(aconn, "Patient", query, count) == expected
        assert await walk_back(aconn, "Patient", query, count) == expected


async def test_one_key_sorts_by_the_lowest_value_ascending_and_the_highest_descending(aconn, store):
    def named(fhir_id, *families):
        return {"resourceType": "Patient", "id": fhir_id, "name": [{"family": family} for family in families]}

    store(named("p1", "Moore", "Adams"), named("p2", "Baker"), named("p3", "Young", "Young"), named("p4"),
          named("p5", "Clark", "Clark", "Zane"))
    for count in (1, 2, 10):
        assert await walk(aconn, "Patient", "_sort=family", count) == ["p1", "p2", "p5", "p3", "p4"]
        assert await walk_back(aconn, "Patient", "_sort=family", count) == ["p1", "p2", "p5", "p3", "p4"]
        assert await walk(aconn, "Patient", "_sort=-family", count) == ["p5", "p3", "p1", "p2", "p4"]
        assert await walk_back(aconn, "Patient", "_sort=-family", count) == ["p5", "p3", "p1", "p2", "p4"]
    assert await ids(aconn, "Patient", "family=c,y&_sort=family") == ["p5", "p3"]


async def test_sort_by_token_quantity_and_date_ranges(aconn, store):
    def obs(fhir_id, code, value, effective):
        return {"resourceType": "Observation", "id": fhir_id, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "kg"}, "effectivePeriod": effective}
    store(obs("o1", "b", 70, {"start": "2024-01-01", "end": "2024-03-01"}),
          obs("o2", "a", 80, {"start": "2024-02-01", "end": "2024-02-02"}),
          obs("o3", "b", 60.5, {"start": "2023-12-01", "end": "2024-01-15"}))
    assert await ids(aconn, "Observation", "_sort=code,value-quantity") == ["o2", "o3", "o1"]
    assert await ids(aconn, "Observation", "_sort=-value-quantity") == ["o2", "o1", "o3"]
    assert await ids(aconn, "Observation", "_sort=date") == ["o3", "o1", "o2"]  # by start
    assert await ids(aconn, "Observation", "_sort=-date") == ["o1", "o2", "o3"]  # by end
    assert await walk(aconn, "Observation", "_sort=-code,-value-quantity", 1) == ["o1", "o3", "o2"]


@pytest.mark.parametrize("sort", ["family,birthdate", "-family,_id", "-birthdate,-family", "gender,-_id",
                                  "-_lastUpdated,family", "family,-_lastUpdated", "-gender,family,birthdate"])
async def test_paging_with_several_keys_survives_concurrent_inserts(aconn, store, sort):
    families = ["Adams", "Baker", "Clark", "Davis", "Evans", "Fox", "Green", "Adams", "Clark"]
    store(*[patient(f"p{i}", family, f"19{50 + i % 4}", "female" if i % 2 else "male",
                    f"2024-01-0{1 + i % 3}T00:00:00Z") for i, family in enumerate(families)])
    before = await ids(aconn, "Patient", f"_sort={sort}&_count=100")
    found = await run(aconn, "Patient", f"_sort={sort}&_count=2")
    seen, extra = [], 0
    while True:
        seen += match_ids(found)
        # New patients land before and after the cursor, with keys equal to existing ones too.
        store(patient(f"new{extra}", ["Aaron", "Zed", "Clark", "Fox"][extra % 4], "1951", "male"))
        extra += 1
        next_url = link(found, "next")
        if next_url is None:
            break
        found = await follow(aconn, next_url)
    assert len(seen) == len(set(seen)), seen
    assert [fhir_id for fhir_id in seen if not fhir_id.startswith("new")] == before


async def test_sort_errors(aconn, people):
    for query in ("_sort=family,family", "_sort=general-practitioner", "_sort=family,nonsense"):
        with pytest.raises(FHIRError) as error:
            await run(aconn, "Patient", query)
        assert error.value.status == 400
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_sort=,")


def generated_patient(rng: random.Random, n: int) -> dict:
    """A Patient with ties, several values and missing values in every sortable element."""
    resource = {"resourceType": "Patient", "id": f"g{n:02d}",
                "meta": {"lastUpdated": f"2024-03-0{1 + rng.randrange(3)}T00:00:00Z"}}
    # Equal index values from different texts or systems make several index rows of one value.
    families = ["Adams", "baker", "Évans", "Evans", "Clark", "CLARK", None]
    names = [{key: value for key, value in (("family", rng.choice(families)),
                                            ("given", rng.sample(["ann", "Bob", "cy", "Dé"], rng.randrange(3))))
              if value}
             for _ in range(rng.randrange(4))]
    if names:
        resource["name"] = names
    if rng.random() < 0.8:
        resource["gender"] = rng.choice(["female", "male", "other"])
    if rng.random() < 0.8:  # whole years cover a range: ascending sorts by its start, descending by its end
        resource["birthDate"] = rng.choice(["1970", "1970-06-15", "1970-12-31", "1980-01-01", "1980-01-01"])
    codes = rng.sample(["x1", "x2", "y1", "z9"], rng.randrange(3))
    if codes:
        resource["identifier"] = [{"system": f"urn:{system}", "value": code}
                                  for code in codes for system in rng.sample("ab", rng.randint(1, 2))]
    # A CodeableConcept with text only has an index row without a code: no sort key.
    languages = rng.sample([{"text": "Klingon"}, {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl"}]},
                            {"coding": [{"system": "urn:ietf:bcp:47", "code": "de"}]}], rng.randrange(3))
    if languages:
        resource["communication"] = [{"language": language} for language in languages]
    return resource


def key_values(resource: dict, code: str) -> list:
    """The values of one sort key of `resource`, as the index holds them."""
    names = resource.get("name", [])
    if code == "family":
        return [normalize_string(name["family"]) for name in names if "family" in name]
    if code == "given":
        return [normalize_string(given) for name in names for given in name.get("given", [])]
    if code == "gender":
        return [resource["gender"]] if "gender" in resource else []
    if code == "birthdate":
        return [date_range(resource["birthDate"])] if "birthDate" in resource else []
    if code == "identifier":
        return [identifier["value"] for identifier in resource.get("identifier", [])]
    if code == "language":
        return [coding["code"] for each in resource.get("communication", [])
                for coding in each["language"].get("coding", [])]
    if code == "_lastUpdated":
        return [resource["meta"]["lastUpdated"]]
    assert code == "_id"
    return [resource["id"]]


def expected_order(resources: dict[int, dict], sort: str) -> list[str]:
    """R4 order, computed here: a resource's key is its lowest value ascending and its highest descending
    (a date's range starts and ends), missing keys last; ties on resource.id in the last key's direction."""
    sorts = [(name.lstrip("-"), name.startswith("-")) for name in sort.split(",")]

    def key(resource: dict, code: str, descending: bool):
        values = key_values(resource, code)
        if code == "birthdate":
            values = [high if descending else low for low, high in values]
        return (max(values) if descending else min(values)) if values else None

    def compare(left: tuple[int, dict], right: tuple[int, dict]) -> int:
        for code, descending in sorts:
            a, b = key(left[1], code, descending), key(right[1], code, descending)
            if a != b:
                if a is None or b is None:
                    return 1 if a is None else -1
                return (1 if a > b else -1) * (-1 if descending else 1)
        return (left[0] - right[0]) * (-1 if sorts[-1][1] else 1)

    return [resource["id"] for _, resource in sorted(resources.items(), key=cmp_to_key(compare))]


@pytest.mark.parametrize("sort", [
    "family,-birthdate", "-family,birthdate,_id", "gender,family,-_id", "-gender,-given", "given,-_lastUpdated",
    "-identifier,family", "birthdate,-gender,given", "-birthdate,_lastUpdated", "language,-family", "-language",
    "family", "-given", "birthdate",
])
async def test_several_keys_with_ties_several_values_and_missing_values(aconn, store, sort):
    rng = random.Random(sort)
    generated = [generated_patient(rng, n) for n in range(36)]
    resources = dict(zip(store(*generated), generated))
    expected = expected_order(resources, sort)
    assert await ids(aconn, "Patient", f"_sort={sort}&_count=100") == expected
    for count in (1, 5, 11):
        assert await walk(aconn, "Patient", f"_sort={sort}", count) == expected
    for count in (5, 11):
        assert await walk_back(aconn, "Patient", f"_sort={sort}", count) == expected
    # A filter that keeps some of them: the same order, those only.
    kept = [fhir_id for fhir_id in expected
            if next(r for r in generated if r["id"] == fhir_id).get("gender") == "female"]
    assert await walk(aconn, "Patient", f"gender=female&_sort={sort}", 4) == kept
