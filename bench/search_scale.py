"""Search benchmark at scale: a generated population of Patients with their Communications, Tasks and
DocumentReferences, bulk-loaded, then p50/p95 of nine searches over HTTP (`make bench-search`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import psycopg

if __package__:
    from .load import Result, fresh_server, open_clients, run_event_loop
else:
    from load import Result, fresh_server, open_clients, run_event_loop

from fhir_server.cli import Database
from fhir_server.search.parameters import search_parameters
from fhir_server.storage import repository

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99999.1"
TARGET_P95_MS = 20.0
BATCH_PATIENTS = 2000
COMMUNICATIONS_PER_PATIENT = 2
LOADED_MARKER = "search-scale.json"
SENT_FROM = date(2023, 1, 1)
SENT_DAYS = 1095

# Half the Patients carry one of these names; the other half a rarer name made of syllables (about 4,700),
# so a name picked from a random Patient is sometimes shared by hundreds and sometimes by a handful.
COMMON_FAMILIES = [
    "Smith", "Müller", "García", "Nguyễn", "O'Brien", "Lefèvre", "Kowalski", "Johansson", "Rossi", "Dubois",
    "Fernández", "Silva", "Kim", "Wang", "Öztürk", "Schäfer", "Jönsson", "Núñez", "Petrović", "Ødegaard",
    "Çelik", "Łukasiewicz", "Brown", "Jones", "Martínez", "Hernández", "López", "González", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Pérez", "Thompson", "White", "Harris",
    "Sánchez", "Clark", "Ramírez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Dvořák", "Novák", "Horváth", "Nagy", "Kovačević", "Popescu", "Ivanova", "Yılmaz", "Kaya", "Şahin",
    "Bäcker", "Groß", "Weiß", "Strauß", "Lindqvist", "Søndergaard", "Håkansson", "Virtanen", "Mäkinen", "Korhonen",
    "Da Costa", "Dos Santos", "Gonçalves", "Conceição", "Araújo", "Rodrigues", "Ferreira", "Álvarez", "Romero",
    "Torres", "Mac Giolla", "Ó Súilleabháin", "Fitzgerald", "Ní Bhriain", "Van der Berg", "De Vries", "Jansen",
    "Bakker", "Visser", "Smit",
]
SYLLABLES = (
    ["Ab", "Bel", "Car", "Dor", "Él", "Fa", "Gu", "Hal", "Ib", "Jo", "Ka", "Lo", "Mé", "Nor", "Os", "Pe", "Quin", "Ra",
     "Sö", "Tor", "Ul", "Va", "Wes", "Xa", "Yo", "Zé"],
    ["ba", "che", "de", "li", "mo", "ne", "ra", "si", "to", "vé", "ga", "lo", "mi", "ñe", "ro"],
    ["ck", "lli", "nen", "son", "sky", "ez", "ova", "ard", "ini", "ou", "berg", "ström"],
)
GIVEN_NAMES = [
    ("José", "male"), ("Zoë", "female"), ("Renée", "female"), ("Ana", "female"), ("Björn", "male"),
    ("Chloé", "female"), ("Søren", "male"), ("François", "male"), ("Jürgen", "male"), ("Siobhán", "female"),
    ("Noah", "male"), ("Emma", "female"), ("Mateo", "male"), ("Amélie", "female"), ("Łukasz", "male"),
    ("Nuñez", "male"), ("Ines", "female"), ("Mohammed", "male"), ("Aiko", "female"), ("Thanh", "other"),
    ("Oluwaseun", "male"), ("Priya", "female"), ("Alex", "unknown"), ("Zeynep", "female"), ("Ğani", "male"),
]
# Most Communications are completed; the rare statuses make `_has` selective (a few hundred Patients each).
RARE_STATUSES = ["preparation", "on-hold", "stopped", "entered-in-error", "not-done", "unknown"]
RARE_STATUS_SHARE = 0.018
TASK_STATUSES = ["requested", "accepted", "in-progress", "completed", "cancelled", "on-hold"]
DOCUMENT_TYPES = [("34133-9", "Summary of episode note"), ("11506-3", "Progress note"),
                  ("18842-5", "Discharge summary"), ("57133-1", "Referral note")]


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """What the generator decided for Patient `n`: the measured queries pick their values from these."""

    n: int
    family: str
    given: str
    gender: str
    birth_date: date

    @property
    def mrn(self) -> str:
        return f"MRN{self.n:08d}"


def facts(seed: int, n: int) -> PatientFacts:
    """The same facts for the same (seed, n), whatever else was generated."""
    rng = random.Random(seed * 1_000_003 + n)
    if rng.random() < 0.5:
        family = rng.choice(COMMON_FAMILIES)
    else:
        family = "".join(rng.choice(part) for part in SYLLABLES)
    given, gender = rng.choice(GIVEN_NAMES)
    birth_date = date(1930, 1, 1) + timedelta(days=rng.randrange(94 * 365))
    return PatientFacts(n, family, given, gender, birth_date)


def patient(f: PatientFacts) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "active": True,
        "identifier": [{"use": "usual", "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": MRN_SYSTEM, "value": f.mrn}],
        "name": [{"use": "official", "family": f.family, "given": [f.given]}],
        "telecom": [{"system": "phone", "value": f"+1 555 {f.n % 1000:03d} {f.n % 10000:04d}", "use": "mobile"},
                    {"system": "email", "value": f"patient{f.n}@example.org"}],
        "gender": f.gender,
        "birthDate": f.birth_date.isoformat(),
    }


def communication_status(seed: int, n: int, k: int) -> str:
    rng = random.Random(seed * 7_000_003 + n * COMMUNICATIONS_PER_PATIENT + k)
    return rng.choice(RARE_STATUSES) if rng.random() < RARE_STATUS_SHARE else "completed"


def sent(seed: int, n: int, k: int) -> datetime:
    rng = random.Random(seed * 5_000_011 + n * COMMUNICATIONS_PER_PATIENT + k)
    day = datetime.combine(SENT_FROM, datetime.min.time(), timezone.utc) + timedelta(days=rng.randrange(SENT_DAYS))
    return day + timedelta(seconds=rng.randrange(86_400))


def linked(seed: int, f: PatientFacts, patient_id: str) -> list[dict[str, Any]]:
    """The Communications, Task and DocumentReference about Patient `f` (stored as `patient_id`)."""
    reference = {"reference": f"Patient/{patient_id}"}
    resources: list[dict[str, Any]] = [
        {"resourceType": "Communication", "status": communication_status(seed, f.n, k), "subject": reference,
         "recipient": [reference], "sent": sent(seed, f.n, k).isoformat().replace("+00:00", "Z"),
         "payload": [{"contentString": f"Reminder {k + 1}: your appointment, {f.given}"}]}
        for k in range(COMMUNICATIONS_PER_PATIENT)
    ]
    resources.append({
        "resourceType": "Task", "status": TASK_STATUSES[f.n % len(TASK_STATUSES)], "intent": "order",
        "for": reference, "owner": reference, "description": "Complete the intake questionnaire",
        "authoredOn": sent(seed, f.n, 0).isoformat().replace("+00:00", "Z"),
    })
    code, display = DOCUMENT_TYPES[f.n % len(DOCUMENT_TYPES)]
    resources.append({
        "resourceType": "DocumentReference", "status": "current", "subject": reference,
        "type": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "date": sent(seed, f.n, 1).isoformat().replace("+00:00", "Z"),
        "content": [{"attachment": {"contentType": "text/plain", "title": f"{display} of {f.given} {f.family}"}}],
    })
    return resources


async def load(database_url: str, patients: int, seed: int) -> int:
    """Create the population through `repository.create_many` (the index rows the API writes, without the
    write hooks, so no MRN assignment or notification work); the number of resources created."""
    search_parameters()
    created = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for start in range(0, patients, BATCH_PATIENTS):
            batch = [facts(seed, n) for n in range(start, min(start + BATCH_PATIENTS, patients))]
            async with conn.transaction():
                stored = await repository.create_many(conn, [patient(f) for f in batch])
                by_type: dict[str, list[dict[str, Any]]] = {}
                for f, row in zip(batch, stored):
                    for resource in linked(seed, f, row.fhir_id):
                        by_type.setdefault(resource["resourceType"], []).append(resource)
                for resources in by_type.values():
                    await repository.create_many(conn, resources)
            created += len(stored) + sum(len(resources) for resources in by_type.values())
            print(f"\rloaded {start + len(batch):,} / {patients:,} Patients ({created:,} resources)", end="",
                  file=sys.stderr, flush=True)
        print(file=sys.stderr)
        await conn.execute("VACUUM ANALYZE")
    return created


def prepare_data(data_dir: Path, patients: int, seed: int) -> dict[str, Any]:
    """Load the population into the embedded PostgreSQL of `data_dir`, unless this exact one is there."""
    marker = data_dir / LOADED_MARKER
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(marker.read_text())
        if loaded["patients"] == patients and loaded["seed"] == seed:
            print(f"reusing the {patients:,} Patients loaded in {data_dir}", file=sys.stderr)
            return loaded
    env_url = os.environ.pop("FHIR_DATABASE_URL", None)  # always the embedded server of data_dir
    try:
        with Database(data_dir) as url:
            started = time.perf_counter()
            resources = asyncio.run(load(url, patients, seed))
            seconds = time.perf_counter() - started
    finally:
        if env_url is not None:
            os.environ["FHIR_DATABASE_URL"] = env_url
    loaded = {"patients": patients, "seed": seed, "resources": resources, "load_seconds": round(seconds, 1)}
    marker.write_text(json.dumps(loaded))
    return loaded


Query = Callable[[random.Random], str]
"""A query's path after the FHIR base, with values drawn from `rng`."""


def queries(seed: int, patients: int) -> dict[str, Query]:
    def someone(rng: random.Random) -> PatientFacts:
        return facts(seed, rng.randrange(patients))

    def prefix(name: str, rng: random.Random) -> str:
        return name[:rng.randint(3, max(3, min(len(name), 6)))]

    def month(rng: random.Random) -> str:
        first = someone(rng).birth_date.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return f"birthdate=ge{first.isoformat()}&birthdate=lt{following.isoformat()}"

    def sent_day(rng: random.Random) -> str:
        day = SENT_FROM + timedelta(days=rng.randrange(SENT_DAYS))
        return f"sent=ge{day.isoformat()}&sent=lt{(day + timedelta(days=1)).isoformat()}"

    return {
        "token identifier": lambda rng: f"/Patient?identifier={quote(MRN_SYSTEM)}|{someone(rng).mrn}",
        "string prefix family": lambda rng: f"/Patient?family={quote(prefix(someone(rng).family, rng))}",
        "date range birthdate": lambda rng: f"/Patient?{month(rng)}",
        "chain subject:Patient.family": lambda rng:
            f"/Communication?subject:Patient.family={quote(someone(rng).family)}",
        "_has Communication status": lambda rng:
            f"/Patient?_has:Communication:subject:status={rng.choice(RARE_STATUSES)}",
        "_include Communication:subject": lambda rng:
            f"/Communication?{sent_day(rng)}&_include=Communication:subject",
        "_revinclude Task:patient": lambda rng:
            f"/Patient?family={quote(someone(rng).family)}&_revinclude=Task:patient",
    }


PAGE_COUNT = 50
# Each walk follows `next` from page 1 to page 50 of one of these (in turn); the request for page 50 is measured.
PAGINGS = {
    "sorted paging, page 50": ["/Patient?_sort=family&_count=20", "/Patient?_sort=-family&_count=20"],
    "sorted on 2 keys, page 50": ["/Patient?_sort=family,-birthdate&_count=20",
                                  "/Communication?_sort=-sent,_id&_count=20"],
}
MATCH = "Patient/$match (issue 5)"
MATCH_TARGET_P95_MS = 50


def match_body(seed: int, patients: int, rng: random.Random) -> bytes:
    """A Parameters for $match: someone's name (its case changed), given name and birth date, as a clerk types
    them at the desk."""
    f = facts(seed, rng.randrange(patients))
    partial = {"resourceType": "Patient", "name": [{"family": f.family.upper(), "given": [f.given]}],
               "birthDate": f.birth_date.isoformat()}
    return orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": partial},
                                                                    {"name": "count", "valueInteger": 10}]})


async def measure(base_url: str, seed: int, patients: int, requests: int, warmup: int, walks: int
                  ) -> list[Result]:
    """Sequential requests on one keep-alive connection: latency without queueing."""
    results = []
    async with open_clients("raw", base_url, 1) as (client,):
        async def send(method: str, path: str, body: bytes = b"") -> tuple[float, bytes, str | None]:
            started = time.perf_counter()
            status, answer = await client.request(method, path, body)
            elapsed = (time.perf_counter() - started) * 1000
            return elapsed, answer, None if status == 200 else f"{method} {path} -> {status}: {answer[:300]!r}"

        measured: list[tuple[str, Callable[[random.Random], tuple[str, str, bytes]]]] = [
            (name, lambda rng, query=query: ("GET", query(rng), b"")) for name, query in queries(seed, patients).items()]
        measured.append((MATCH, lambda rng: ("POST", "/Patient/$match", match_body(seed, patients, rng))))
        for name, request in measured:
            rng = random.Random(f"{seed}:{name}")
            for _ in range(warmup):
                await send(*request(rng))
            latencies, errors = [], []
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(requests):
                elapsed, _, error = await send(*request(rng))
                latencies.append(elapsed)
                errors += [error] if error else []
            results.append(Result(name, 1, len(latencies), len(errors), time.perf_counter() - started, latencies,
                                  1, errors[0] if errors else None, time.process_time() - cpu))
            print_result(results[-1])

        for name, paths in PAGINGS.items():
            latencies, errors = [], []
            started, cpu = time.perf_counter(), time.process_time()
            for walk in range(warmup // 10 + walks):
                path: str | None = paths[walk % len(paths)]
                for _ in range(PAGE_COUNT):
                    assert path is not None
                    elapsed, body, error = await send("GET", path)
                    if error:
                        errors.append(error)
                        break
                    links = {link["relation"]: link["url"] for link in orjson.loads(body).get("link", [])}
                    path = links.get("next", "").removeprefix(base_url) or None
                    if path is None:
                        errors.append(f"no next link after {PAGE_COUNT} pages or fewer")
                        break
                else:
                    if walk >= warmup // 10:
                        latencies.append(elapsed)
            results.append(Result(name, 1, len(latencies), len(errors), time.perf_counter() - started, latencies,
                                  1, errors[0] if errors else None, time.process_time() - cpu))
            print_result(results[-1])
    return results


def print_header() -> None:
    print(f"{'query':<32} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  target p95",
          flush=True)


def print_result(result: Result) -> None:
    target = MATCH_TARGET_P95_MS if result.phase == MATCH else TARGET_P95_MS
    verdict = "ok" if result.percentile(95) < target and not result.errors else "MISSED"
    print(f"{result.phase:<32} {result.requests:>8} {result.errors:>6} {result.percentile(50):>8.2f} "
          f"{result.percentile(95):>8.2f} {result.percentile(100):>8.2f}  < {target:g} ms {verdict}",
          flush=True)


def machine_load() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    return "unknown"


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000, help="Patients to generate (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--data-dir", type=Path,
                        help="keep the loaded database here and reuse it on the next run with the same "
                             "--patients and --seed (default: a temporary directory)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per query (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per query first (default 20)")
    parser.add_argument("--walks", type=int, default=20,
                        help=f"sorted paging walks of {PAGE_COUNT} pages each (default 20)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args(argv)


@contextlib.contextmanager
def data_directory(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="fhir-search-scale-") as tmp:
        yield Path(tmp) / "data"


def main() -> int:
    options = parse_options()
    with data_directory(options.data_dir) as data_dir:
        print(f"load before: {machine_load()}", file=sys.stderr)
        loaded = prepare_data(data_dir, options.patients, options.seed)
        print(f"{loaded['resources']:,} resources for {options.patients:,} Patients loaded in "
              f"{loaded['load_seconds']} s ({loaded['resources'] / loaded['load_seconds']:,.0f}/s)")
        with fresh_server(1, data_dir) as base_url:
            print_header()
            results = run_event_loop(measure(base_url, options.seed, options.patients, options.requests,
                                             options.warmup, options.walks))
        load_after = machine_load()
        print(f"machine load after: {load_after}")
    for result in results:
        if result.first_error:
            print(f"{result.phase}: {result.errors} errors; first: {result.first_error}", file=sys.stderr)
    if options.json:
        options.json.write_text(json.dumps({"loaded": loaded, "machine_load": load_after, "cpus": os.cpu_count(),
                                            "results": [result.as_json() for result in results]}, indent=2) + "\n")
    missed = [r.phase for r in results if r.errors or r.percentile(95) >= TARGET_P95_MS]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
