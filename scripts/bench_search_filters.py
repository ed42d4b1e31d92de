"""Time chained, _has, composite and full-text searches on a generated data set (embedded PostgreSQL).

    python scripts/bench_search_filters.py [--patients 100000] [--runs 50]

Index rows are generated in SQL with the shapes `extract_index` writes (it is not run per resource), so
100k patients with 3 Observations each load in about a minute. Prints p50/p95 per query, in ms, with the
search engine's own SQL (parse_query) and the whole searchset Bundle built.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl

import psycopg

from fhir_server.search.engine import search
from fhir_server.search.query import parse_query
from fhir_server.storage.database import migrate
from fhir_server.storage.embedded import EmbeddedPostgres

BASE = "http://bench.local/fhir"

LOAD = """
INSERT INTO resource (id, resource_type, fhir_id, version_id, last_updated, content)
SELECT i, 'Organization', 'org-' || i, 1, now(),
       convert_to(json_build_object('resourceType', 'Organization', 'id', 'org-' || i, 'name', 'Org ' || i)::text, 'UTF8')
FROM generate_series(1, %(orgs)s) i;
INSERT INTO search_string (resource_id, resource_type, param, value, value_exact)
SELECT i, 'Organization', 'name', 'org ' || i, 'Org ' || i FROM generate_series(1, %(orgs)s) i;

INSERT INTO resource (id, resource_type, fhir_id, version_id, last_updated, content)
SELECT 100000000 + i, 'Patient', 'p' || i, 1, now(),
       convert_to(json_build_object('resourceType', 'Patient', 'id', 'p' || i,
           'name', json_build_array(json_build_object('family', 'Fam' || i)),
           'identifier', json_build_array(json_build_object('system', 'urn:mrn', 'value', i::text)),
           'managingOrganization', json_build_object('reference', 'Organization/org-' || (i %% %(orgs)s + 1)),
           'text', json_build_object('status', 'generated', 'div', '<div>patient ' || i || ' with '
               || (ARRAY['asthma', 'diabetes', 'hypertension', 'migraine'])[i %% 4 + 1] || '</div>'))::text, 'UTF8')
FROM generate_series(1, %(patients)s) i;
INSERT INTO search_string (resource_id, resource_type, param, value, value_exact)
SELECT 100000000 + i, 'Patient', p, 'fam' || i, 'Fam' || i FROM generate_series(1, %(patients)s) i,
       unnest(ARRAY['name', 'family']) p;
INSERT INTO search_token (resource_id, resource_type, param, system, code)
SELECT 100000000 + i, 'Patient', 'identifier', 'urn:mrn', i::text FROM generate_series(1, %(patients)s) i;
INSERT INTO search_reference (resource_id, resource_type, param, target_type, target_id)
SELECT 100000000 + i, 'Patient', 'organization', 'Organization', 'org-' || (i %% %(orgs)s + 1)
FROM generate_series(1, %(patients)s) i;
INSERT INTO search_text (resource_id, resource_type, param, value)
SELECT 100000000 + i, 'Patient', '_text', 'patient ' || i || ' with '
       || (ARRAY['asthma', 'diabetes', 'hypertension', 'migraine'])[i %% 4 + 1]
FROM generate_series(1, %(patients)s) i;

INSERT INTO resource (id, resource_type, fhir_id, version_id, last_updated, content)
SELECT 200000000 + i, 'Observation', 'o' || i, 1, now(),
       convert_to(json_build_object('resourceType', 'Observation', 'id', 'o' || i, 'status', 'final',
           'code', json_build_object('coding', json_build_array(json_build_object(
               'system', 'http://loinc.org', 'code', 'code-' || (i %% 50)))),
           'subject', json_build_object('reference', 'Patient/p' || ((i - 1) / 3 + 1)),
           'valueQuantity', json_build_object('value', i %% 200, 'system', 'http://unitsofmeasure.org',
               'code', 'mg'))::text, 'UTF8')
FROM generate_series(1, %(patients)s * 3) i;
INSERT INTO search_token (resource_id, resource_type, param, system, code)
SELECT 200000000 + i, 'Observation', 'code', 'http://loinc.org', 'code-' || (i %% 50)
FROM generate_series(1, %(patients)s * 3) i;
INSERT INTO search_token (resource_id, resource_type, param, system, code, element)
SELECT 200000000 + i, 'Observation', 'code-value-quantity$0', 'http://loinc.org', 'code-' || (i %% 50), 0
FROM generate_series(1, %(patients)s * 3) i;
INSERT INTO search_quantity (resource_id, resource_type, param, value, low, high, system, code, unit,
                             canonical_code, canonical_value, canonical_low, canonical_high, element)
SELECT 200000000 + i, 'Observation', p, i %% 200, i %% 200 - 0.5, i %% 200 + 0.5, 'http://unitsofmeasure.org',
       'mg', 'mg', 'g', (i %% 200) / 1000.0, (i %% 200 - 0.5) / 1000.0, (i %% 200 + 0.5) / 1000.0,
       CASE WHEN p = 'value-quantity' THEN NULL ELSE 0 END
FROM generate_series(1, %(patients)s * 3) i, unnest(ARRAY['value-quantity', 'code-value-quantity$1']) p;
INSERT INTO search_reference (resource_id, resource_type, param, target_type, target_id)
SELECT 200000000 + i, 'Observation', p, 'Patient', 'p' || ((i - 1) / 3 + 1)
FROM generate_series(1, %(patients)s * 3) i, unnest(ARRAY['subject', 'patient']) p;
"""

QUERIES = [
    ("Observation", "subject:Patient.identifier=urn:mrn|4242"),
    ("Observation", "subject.name=fam4242"),
    ("Observation", "subject:Patient.organization.name=org 77&_count=20"),
    ("Patient", "_has:Observation:subject:code=http://loinc.org|code-7&_count=20"),
    ("Patient", "_has:Observation:patient:code=code-7&name=fam4242"),
    ("Patient", "identifier=urn:mrn|4242&_has:Observation:subject:value-quantity=gt100"),
    ("Observation", "code-value-quantity=http://loinc.org|code-7$gt0.15|http://unitsofmeasure.org|g&_count=20"),
    ("Observation", "code-value-quantity=http://loinc.org|code-7$150&subject=Patient/p4242"),
    ("Patient", "_text=diabetes&_count=20"),
    ("Patient", "_text=diabetes&name=fam4242"),
]


async def bench(url: str, runs: int, explain: bool, only: str | None, prepare: bool) -> None:
    # The server's pool prepares statements after two runs (then PostgreSQL may choose a generic plan).
    async with await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     prepare_threshold=2 if prepare else None) as conn:
        for resource_type, query in QUERIES:
            if only and only not in f"{resource_type}?{query}":
                continue
            pairs = parse_qsl(query)
            if explain:
                condition = parse_query(resource_type, pairs, strict=True, base_url=BASE).condition
                cursor = await conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) SELECT r.id FROM resource r "
                                            f"WHERE {condition.where()} ORDER BY r.id LIMIT 21", condition.args)
                print(f"-- {resource_type}?{query}")
                print("\n".join(row[0] for row in await cursor.fetchall()))
            timings = []
            for _ in range(runs):
                start = time.perf_counter()
                await search(conn, base_url=BASE, resource_type=resource_type, query=pairs, strict=True)
                timings.append((time.perf_counter() - start) * 1000)
            timings.sort()
            p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
            print(f"{resource_type}?{query}: p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--organizations", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print each query's plan first")
    parser.add_argument("--only", help="run the queries whose text contains this")
    parser.add_argument("--no-prepare", action="store_true", help="never use server-side prepared statements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        embedded = EmbeddedPostgres(Path(directory))
        url = embedded.start()
        try:
            migrate(url)
            start = time.perf_counter()
            with psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
                conn.execute(LOAD, {"patients": args.patients, "orgs": args.organizations})
                conn.execute("VACUUM ANALYZE")  # as autovacuum would have, for index-only scans
            print(f"loaded {args.patients} patients, {3 * args.patients} observations "
                  f"in {time.perf_counter() - start:.0f} s")
            asyncio.run(bench(url, args.runs, args.explain, args.only, not args.no_prepare))
        finally:
            embedded.stop()


if __name__ == "__main__":
    main()
