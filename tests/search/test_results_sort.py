"""_sort on several keys, ascending and descending, with keyset paging that neither skips nor repeats."""

import pytest

from fhir_server.errors import FHIRError
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
                                  "-_lastUpdated,family"])
async def test_paging_with_several_keys_survives_concurrent_inserts(aconn, store, sort):
    families = ["Adams", "Baker", "Clark", "Davis", "Evans", "Fox", "Green", "Adams", "Clark"]
    store(*[patient(f"p{i}", family, f"19{50 + i % 4}", "female" if i % 2 else "male",
                    f"2024-01-0{1 + i % 3}T00:00:00Z") for i, family in enumerate(families)])
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
    assert {f"p{i}" for i in range(len(families))} <= set(seen)


async def test_sort_errors(aconn, people):
    for query in ("_sort=family,family", "_sort=general-practitioner", "_sort=family,nonsense"):
        with pytest.raises(FHIRError) as error:
            await run(aconn, "Patient", query)
        assert error.value.status == 400
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_sort=,")
