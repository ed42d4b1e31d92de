"""Every statement of the benchmarked searches (bench/search_scale.py) can be served by indexes.

The statements are the ones the search engine really runs: the test connection records each statement and
its parameters while the search executes, then EXPLAINs them. A test database holds a few hundred rows,
where reading a whole table (or hashing all of it for a join) is legitimately the cheapest plan, so the
planner's choice here says nothing about 100,000 Patients (the benchmark measures that). Instead each
EXPLAIN runs with sequential scans, hash joins and merge joins off: the planner then looks every condition
and every join up through an index wherever one can serve it, and a table still read whole (a sequential
scan, or an index scan without an index condition, the fallback when sequential scans are off) means that
no index applies: a dropped index, or a condition written so that no index fits
(`test_a_missing_index_shows_as_a_whole_table_scan` checks that the check notices).

Which index the planner prefers among several that apply does depend on the data; the two indexes added for
scale are checked where that choice is certain: the page-50 query can only get its order from the sort
index, and the date range gets enough rows for the planner to prefer the overlap index.
"""

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
import psycopg
import pytest

from bench.search_scale import (
    COMMUNICATIONS_PER_PATIENT, MRN_SYSTEM, PatientFacts, facts, linked, patient, sent,
)
from fhir_server.search.engine import search
from fhir_server.search.values import normalize_string
from tests.search.conftest import BASE

SEED = 3
PATIENTS = 60
ONE = 7
"""The Patient whose values the searches look for."""


class RecordingConnection:
    """Runs statements on `conn` and keeps each with its parameters."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, Any]] = []

    async def execute(self, sql: str, args: Any = None, **options: Any) -> psycopg.AsyncCursor:
        self.statements.append((sql, args))
        return await self.conn.execute(sql, args, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.fixture
def population(store) -> PatientFacts:
    """Patients with their Communications, Tasks and DocumentReferences, as the benchmark generates them;
    one Communication of Patient ONE has a rare status, so `_has` finds it."""
    for n in range(PATIENTS):
        f = facts(SEED, n)
        patient_id = f"p{n}"
        resources = [{**patient(f), "id": patient_id}]
        for k, resource in enumerate(linked(SEED, f, patient_id)):
            resources.append({**resource, "id": f"{resource['resourceType'].lower()}-{n}-{k}"})
        if n == ONE:
            resources[1]["status"] = "on-hold"
        store(*resources)
    return facts(SEED, ONE)


def benchmarked_queries(f: PatientFacts) -> dict[str, str]:
    """The benchmark's queries, with values that Patient `f` matches (its status and day made to match)."""
    first = f.birth_date.replace(day=1)
    day = sent(SEED, f.n, 0).date()
    return {
        "identifier": f"/Patient?identifier={quote(MRN_SYSTEM)}|{f.mrn}",
        "family prefix": f"/Patient?family={quote(f.family[:3])}",
        "birthdate range": f"/Patient?birthdate=ge{first}&birthdate=lt{(first + timedelta(days=32)).replace(day=1)}",
        "chain": f"/Communication?subject:Patient.family={quote(f.family)}",
        "_has": "/Patient?_has:Communication:subject:status=on-hold",
        "_include": f"/Communication?sent=ge{day}&sent=lt{day + timedelta(days=1)}&_include=Communication:subject",
        "_revinclude": f"/Patient?family={quote(f.family)}&_revinclude=Task:patient",
    }


async def run_recorded(conn: psycopg.AsyncConnection, path: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The searchset of `path` (after the base) and the statements the search ran."""
    url = urlsplit(path)
    recording = RecordingConnection(conn)
    body = await search(recording, base_url=BASE, resource_type=url.path.strip("/"), query=parse_qsl(url.query),
                        strict=True)
    return orjson.loads(body), recording.statements


def whole_table_scans(plan: dict[str, Any]) -> list[str]:
    """Tables read whole: by a sequential scan, or by an index scan without an index condition (what the
    planner falls back to when sequential scans are off and an index merely gives an order or a filter)."""
    node = plan["Node Type"]
    whole = node == "Seq Scan" or (node in ("Index Scan", "Index Only Scan") and "Index Cond" not in plan)
    found = [f"{plan.get('Relation Name', '?')} ({node})"] if whole else []
    for child in plan.get("Plans", []):
        found += whole_table_scans(child)
    return found


def index_names(plan: dict[str, Any]) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= index_names(child)
    return found


async def plans(conn: psycopg.AsyncConnection, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The planner's own choice for each statement, nothing disabled."""
    found = []
    for sql, args in statements:
        cursor = await conn.execute("EXPLAIN (FORMAT JSON) " + sql, args)
        found.append((await cursor.fetchone())[0][0]["Plan"])
    return found


async def scans_without_index(conn: psycopg.AsyncConnection, statements: list[tuple[str, Any]]) -> list[str]:
    """Tables that some statement still reads whole when the planner avoids sequential scans wherever it can."""
    found = []
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_hashjoin = off")
        await conn.execute("SET LOCAL enable_mergejoin = off")
        for sql, args in statements:
            cursor = await conn.execute("EXPLAIN (FORMAT JSON) " + sql, args)
            plan = (await cursor.fetchone())[0][0]["Plan"]
            found += [f"{table} in: {sql}" for table in whole_table_scans(plan)]
    return found


def entries(bundle: dict[str, Any], mode: str) -> list[str]:
    return [entry["fullUrl"].removeprefix(BASE + "/") for entry in bundle.get("entry", [])
            if entry["search"]["mode"] == mode]


@pytest.mark.parametrize("query", ["identifier", "family prefix", "birthdate range", "chain", "_has", "_include",
                                   "_revinclude"])
async def test_benchmarked_search_reads_no_table_whole(aconn, db, population, query):
    db.execute("ANALYZE")
    bundle, statements = await run_recorded(aconn, benchmarked_queries(population)[query])
    matches = entries(bundle, "match")
    assert matches, "the search must find something, so that every statement it can run is checked"
    if query in ("_include", "_revinclude"):
        assert entries(bundle, "include")
    if query in ("identifier", "_has", "_revinclude"):
        assert f"Patient/p{ONE}" in matches
    assert await scans_without_index(aconn, statements) == []


def communications() -> list[tuple[str, datetime]]:
    """The population's Communications as (id, sent)."""
    return [(f"communication-{n}-{k}", sent(SEED, n, k)) for n in range(PATIENTS)
            for k in range(COMMUNICATIONS_PER_PATIENT)]


SORTED_PAGING = {
    # Ties on the last key follow resource.id (in its direction), which follows n here (each Patient was
    # stored before the next).
    "/Patient?_sort=family": ("search_string_sort", lambda: [
        f"Patient/p{n}" for n in sorted(range(PATIENTS), key=lambda n: (normalize_string(facts(SEED, n).family), n))]),
    "/Patient?_sort=family,-birthdate": ("search_string_sort", lambda: [
        f"Patient/p{n}" for n in sorted(range(PATIENTS), key=lambda n: (
            normalize_string(facts(SEED, n).family), -facts(SEED, n).birth_date.toordinal(), -n))]),
    # Among 60 birth dates the planner may as well sort them: no index is asserted for this one.
    "/Patient?_sort=-birthdate,family": (None, lambda: [
        f"Patient/p{n}" for n in sorted(range(PATIENTS), key=lambda n: (
            -facts(SEED, n).birth_date.toordinal(), normalize_string(facts(SEED, n).family), n))]),
    "/Communication?_sort=-sent,_id": ("search_date_high", lambda: [
        f"Communication/{fhir_id}" for fhir_id, _ in sorted(communications(), key=lambda c: c[1], reverse=True)]),
}


@pytest.mark.parametrize("path", SORTED_PAGING)
async def test_sorted_paging_to_page_50_reads_no_table_whole(aconn, db, population, path):
    db.execute("ANALYZE")
    index, expected = SORTED_PAGING[path]
    path += "&_count=1"
    seen = []
    for _ in range(50):
        bundle, statements = await run_recorded(aconn, path)
        seen += entries(bundle, "match")
        path = next(link["url"] for link in bundle["link"] if link["relation"] == "next").removeprefix(BASE)
    assert seen == expected()[:50]
    assert await scans_without_index(aconn, statements) == []
    # The page starts where the last one ended, in an index that holds the first key's order (migrations
    # 0011 and 0017): the walk stops after one page, however many resources match.
    if index is not None:
        assert index in index_names((await plans(aconn, statements))[0])


async def test_a_date_range_is_found_by_overlap_at_scale(aconn, db, population):
    """With a realistic number of birth dates the planner finds a one-month range through the GiST index on
    the stored ranges (migration 0011), where a B-tree on `low` would read every earlier birth date."""
    db.execute("INSERT INTO search_date (resource_id, resource_type, param, low, high) "
               "SELECT 1000000 + n, 'Patient', 'birthdate', day, day + interval '1 day' - interval '1 microsecond' "
               "FROM generate_series(1, 50000) AS n, "
               "LATERAL (SELECT timestamptz '1930-01-01' + (n % 34000) * interval '1 day' AS day) AS d")
    db.execute("ANALYZE")
    _, statements = await run_recorded(aconn, benchmarked_queries(population)["birthdate range"])
    assert "search_date_span" in index_names((await plans(aconn, statements))[0])


async def test_a_missing_index_shows_as_a_whole_table_scan(aconn, db, population):
    """The check above would notice: without the token index, the identifier search reads the table."""
    _, statements = await run_recorded(aconn, benchmarked_queries(population)["identifier"])
    async with aconn.transaction():
        await aconn.execute("DROP INDEX search_token_code")
        found = await scans_without_index(aconn, statements)
        raise psycopg.Rollback()  # the index stays
    assert any(scan.startswith("search_token (") for scan in found), found
