"""Load benchmark: create, read, search and transaction throughput and latency of the FHIR server (`make bench`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from fhir_server.cli import is_loopback

try:
    import uvloop
except ImportError:
    uvloop = None

if __package__:
    from . import http1
else:
    import http1

REPO = Path(__file__).resolve().parent.parent
FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
STARTUP_SECONDS = 90
SHUTDOWN_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 120
WARMUP_REQUESTS = 100
WARMUP_TRANSACTIONS = 3
TRANSACTION_PATIENTS = 50
ERROR_BODY_CHARS = 1000
MAX_ERROR_RATE = 0.01

# The family names cycle, so `family=X` matches about one Patient in fifty.
FAMILY_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
]
GIVEN_NAMES = [
    ("Emma", "female"), ("Liam", "male"), ("Olivia", "female"), ("Noah", "male"), ("Ava", "female"),
    ("Elijah", "male"), ("Sophia", "female"), ("James", "male"), ("Isabella", "female"), ("Lucas", "male"),
    ("Mia", "female"), ("Mateo", "male"), ("Amelia", "female"), ("Benjamin", "male"), ("Harper", "female"),
]
CITIES = [
    ("Boston", "MA", "02118"), ("Springfield", "IL", "62701"), ("Austin", "TX", "78701"),
    ("Portland", "OR", "97205"), ("Denver", "CO", "80202"), ("Madison", "WI", "53703"),
]

# Requests per second; the peer was measured on this machine.
TARGETS_CONCURRENT = {"create": 700, "read": 2500}
MEDPLUM = {
    "sequential": {"create": 136, "search": 140, "read": 313},
    "concurrent": {"create": 239, "search": 226, "read": 615},
}
MEDPLUM_VERSION = "5.0.10"
MEDPLUM_CONCURRENCY = 8


def patient(n: int) -> dict:
    """A realistic Patient of about 1.5 KB; `n` picks the names, so consecutive Patients differ."""
    family = FAMILY_NAMES[n % len(FAMILY_NAMES)]
    given, gender = GIVEN_NAMES[n % len(GIVEN_NAMES)]
    city, state, postal_code = CITIES[n % len(CITIES)]
    mrn = f"{n:08d}-{uuid.uuid4().hex[:8]}"
    return {
        "resourceType": "Patient",
        "active": True,
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                     "display": "Medical record number"}]},
                "system": "urn:oid:1.2.36.146.595.217.0.1",
                "value": mrn,
                "assigner": {"display": "Acme Healthcare"},
            },
            {
                "use": "official",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS",
                                     "display": "Social Security number"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": f"{900 + n % 99:03d}-{n % 89 + 10:02d}-{n % 9973:04d}",
            },
        ],
        "name": [
            {"use": "official", "family": family, "given": [given, "Marie" if gender == "female" else "Paul"],
             "prefix": ["Ms." if gender == "female" else "Mr."]},
            {"use": "nickname", "given": [given[:3]]},
        ],
        "telecom": [
            {"system": "phone", "value": f"(555) {n % 900 + 100:03d}-{n % 10000:04d}", "use": "home", "rank": 2},
            {"system": "phone", "value": f"(555) {n % 800 + 200:03d}-{(n * 7) % 10000:04d}", "use": "mobile",
             "rank": 1},
            {"system": "email", "value": f"{given.lower()}.{family.lower()}{n}@example.org", "use": "home"},
        ],
        "gender": gender,
        "birthDate": f"{1940 + n % 80}-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
        "address": [
            {"use": "home", "type": "both", "text": f"{n % 999 + 1} Main Street, {city}, {state} {postal_code}",
             "line": [f"{n % 999 + 1} Main Street", f"Apt {n % 40 + 1}"], "city": city, "state": state,
             "postalCode": postal_code, "country": "US", "period": {"start": "2015-06-01"}},
        ],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                      "code": "M", "display": "Married"}]},
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English"}]},
             "preferred": True},
        ],
        "contact": [
            {"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                                           "code": "N"}]}],
             "name": {"family": family, "given": ["Alex"]},
             "telecom": [{"system": "phone", "value": "(555) 010-0199"}]},
        ],
    }


def transaction_bundle(n: int) -> dict:
    """A transaction of Patients and as many Communications, each about a Patient of the same Bundle."""
    entries = []
    communications = []
    for k in range(TRANSACTION_PATIENTS):
        full_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": full_url, "resource": patient(n * TRANSACTION_PATIENTS + k),
                        "request": {"method": "POST", "url": "Patient"}})
        communications.append({
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {"resourceType": "Communication", "status": "completed",
                         "subject": {"reference": full_url}, "sent": "2024-05-01T10:00:00Z",
                         "payload": [{"contentString": f"Appointment reminder {n}-{k}"}]},
            "request": {"method": "POST", "url": "Communication"},
        })
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries + communications}


TRANSACTION_ENTRIES = 2 * TRANSACTION_PATIENTS


class Client(Protocol):
    """One concurrent worker's way to the server."""

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send `body` to `path` ("" or "/..." after the FHIR base); the response's status and body."""
        ...


@dataclass
class HttpxClient:
    """Requests through a shared httpx client, whose pool holds one connection per worker."""

    client: httpx.AsyncClient
    base_url: str

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self.client.request(method, f"{self.base_url}{path}", content=body or None,
                                             headers=HEADERS)
        return response.status_code, response.content


@dataclass
class RawClient:
    """Requests on the worker's own `http1` connection: about a tenth of httpx's CPU per request."""

    connection: http1.Connection
    base_path: bytes

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return await self.connection.request(method.encode(), self.base_path + path.encode() or b"/", body)


CLIENTS = ("raw", "httpx")
REQUEST_ERRORS = (httpx.HTTPError, *http1.ERRORS, ValueError)
"""What a request may raise: transport failures of either client, and a body that is not the JSON expected."""


@contextlib.asynccontextmanager
async def open_clients(kind: str, base_url: str, count: int) -> AsyncIterator[list[Client]]:
    """`count` clients of `kind` (one per concurrent worker) on fresh keep-alive connections."""
    if kind == "httpx":
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS, trust_env=False) as client:
            yield [HttpxClient(client, base_url)] * count
        return
    url = urlsplit(base_url)
    connections = [http1.Connection(url.hostname or "127.0.0.1", url.port or 80, HEADERS,
                                    REQUEST_TIMEOUT_SECONDS) for _ in range(count)]
    try:
        yield [RawClient(connection, url.path.encode()) for connection in connections]
    finally:
        for connection in connections:
            await connection.aclose()


Send = Callable[[Client, int], Awaitable[str | None]]
"""One request of a phase: given the worker's client and the request's number, the error it met, or None."""


def failure(method: str, path: str, status: int, body: bytes) -> str:
    return f"{method} {path} -> {status}: {body[:ERROR_BODY_CHARS].decode(errors='replace')}"


@dataclass
class Workload:
    """The four phases' requests against one FHIR base; reads use the Patients that the creates made."""

    patient_ids: list[str] = field(default_factory=list)

    async def create(self, client: Client, n: int) -> str | None:
        body = orjson.dumps(patient(len(self.patient_ids) + n))
        status, content = await client.request("POST", "/Patient", body)
        if status != 201:
            return failure("POST", "/Patient", status, content)
        patient_id = orjson.loads(content).get("id")
        if not isinstance(patient_id, str):
            return failure("POST", "/Patient", status, content) + " (no id)"
        self.patient_ids.append(patient_id)
        return None

    async def read(self, client: Client, n: int) -> str | None:
        if not self.patient_ids:
            return "no Patient to read: every create failed"
        # A stride through the ids so that consecutive reads hit different rows.
        path = f"/Patient/{self.patient_ids[(n * 7919) % len(self.patient_ids)]}"
        status, content = await client.request("GET", path)
        return None if status == 200 else failure("GET", path, status, content)

    async def search(self, client: Client, n: int) -> str | None:
        # The names are plain ASCII letters, so the query needs no percent-encoding.
        path = f"/Patient?family={FAMILY_NAMES[n % len(FAMILY_NAMES)]}"
        status, content = await client.request("GET", path)
        return None if status == 200 else failure("GET", path, status, content)

    async def transaction(self, client: Client, n: int) -> str | None:
        status, content = await client.request("POST", "", orjson.dumps(transaction_bundle(n)))
        if status != 200:
            return failure("POST", "", status, content)
        bundle = orjson.loads(content)
        statuses = [entry.get("response", {}).get("status", "") for entry in bundle.get("entry", [])]
        if bundle.get("type") != "transaction-response" or len(statuses) != TRANSACTION_ENTRIES \
                or not all(status.startswith("201") for status in statuses):
            return f"unexpected transaction-response: {content[:ERROR_BODY_CHARS].decode(errors='replace')}"
        return None


@dataclass
class Result:
    phase: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    entries_per_request: int
    first_error: str | None
    client_cpu_seconds: float
    """This process's CPU time during the run: near `seconds` means the client, not the server, set the pace."""

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def client_cpu_percent(self) -> float:
        return 100 * self.client_cpu_seconds / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the latencies, in ms."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]

    def as_json(self) -> dict:
        summary = {
            "phase": self.phase, "concurrency": self.concurrency, "requests": self.requests,
            "errors": self.errors, "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests_per_second, 1),
            "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2), "client_cpu_percent": round(self.client_cpu_percent, 1),
            "first_error": self.first_error,
        }
        if self.entries_per_request > 1:
            summary["entries_per_second"] = round(self.requests_per_second * self.entries_per_request, 1)
        return summary


async def drive(clients: list[Client], send: Send, count: int, seconds: float, phase: str,
                entries_per_request: int) -> Result:
    """Send up to `count` requests from one worker per client, stopping early when `seconds` run out."""
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds

    async def worker(client: Client) -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            n = issued
            issued += 1
            sent = time.perf_counter()
            try:
                error = await send(client, n)
            except REQUEST_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
            latencies.append((time.perf_counter() - sent) * 1000)
            if error is not None:
                errors.append(error)

    await asyncio.gather(*(worker(client) for client in clients))
    return Result(phase, len(clients), len(latencies), len(errors), time.perf_counter() - start, latencies,
                  entries_per_request, errors[0] if errors else None, time.process_time() - cpu_start)


async def run_phase(base_url: str, options: argparse.Namespace, send: Send, phase: str, concurrency: int,
                    count: int, warmup: int, entries_per_request: int) -> Result:
    """Warm up, then measure, on fresh keep-alive clients with one connection per concurrent worker."""
    async with open_clients(options.client, base_url, concurrency) as clients:
        await drive(clients, send, warmup, options.seconds, phase, entries_per_request)
        result = await drive(clients, send, count, options.seconds, phase, entries_per_request)
    print_row(result)
    return result


async def run_all(base_url: str, options: argparse.Namespace) -> list[Result]:
    workload = Workload()
    phases: list[tuple[str, Send, int, int, int]] = [
        ("create", workload.create, options.requests, WARMUP_REQUESTS, 1),
        ("read", workload.read, options.requests, WARMUP_REQUESTS, 1),
        ("search", workload.search, options.requests, WARMUP_REQUESTS, 1),
        ("transaction", workload.transaction, options.transactions, WARMUP_TRANSACTIONS, TRANSACTION_ENTRIES),
    ]
    print_header()
    results = []
    for phase, send, count, warmup, entries in phases:
        for concurrency in (1, options.concurrency):
            results.append(await run_phase(base_url, options, send, phase, concurrency, count, warmup, entries))
    return results


def print_header() -> None:
    print(f"{'phase':<12} {'conc':>4} {'requests':>8} {'errors':>6} {'req/s':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'client cpu':>10} {'entries/s':>9}", flush=True)


def print_row(result: Result) -> None:
    entries = f"{result.requests_per_second * result.entries_per_request:9.0f}" \
        if result.entries_per_request > 1 else ""
    print(f"{result.phase:<12} {result.concurrency:>4} {result.requests:>8} {result.errors:>6} "
          f"{result.requests_per_second:>8.0f} {result.percentile(50):>8.2f} {result.percentile(95):>8.2f} "
          f"{result.percentile(99):>8.2f} {result.client_cpu_percent:>9.0f}% {entries}", flush=True)


def print_reference(results: list[Result], concurrency: int) -> None:
    """This server beside the targets and the peer, in requests per second."""
    measured = {(r.phase, r.concurrency == 1): r.requests_per_second for r in results}
    print(f"\nreq/s            this seq  this c={concurrency:<3} target c=8  "
          f"Medplum {MEDPLUM_VERSION} seq  Medplum c={MEDPLUM_CONCURRENCY}")
    for phase in ("create", "read", "search"):
        target = TARGETS_CONCURRENT.get(phase)
        print(f"{phase:<16} {measured.get((phase, True), 0):>8.0f}  {measured.get((phase, False), 0):>9.0f}  "
              f"{f'>= {target:,}' if target else '':>10}  {MEDPLUM['sequential'][phase]:>18}  "
              f"{MEDPLUM['concurrent'][phase]:>11}")


def report_errors(results: list[Result]) -> float:
    """Print each phase's first error; return the share of requests that failed."""
    for result in results:
        if result.first_error:
            print(f"\n{result.phase} c={result.concurrency}: {result.errors} errors; first: {result.first_error}")
    total = sum(r.requests for r in results)
    errors = sum(r.errors for r in results)
    return errors / total if total else 1.0


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerDidNotStart(Exception):
    pass


def log_tail(log: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_until_ready(base_url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with httpx.Client(timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerDidNotStart(f"server exited with {process.returncode}:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{base_url}/metadata", headers={"Accept": FHIR_JSON}).status_code == 200:
                    return
            time.sleep(0.25)
    raise ServerDidNotStart(f"GET {base_url}/metadata did not answer 200 within {STARTUP_SECONDS} s:\n"
                            f"{log_tail(log)}")


def stop_leftover_postgres(pgdata: Path) -> None:
    """Fast-shut-down a postmaster still running in `pgdata` (the server should have stopped it itself)."""
    pid_file = pgdata / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().splitlines()[0])
        if str(pgdata) not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return
        print(f"embedded PostgreSQL (pid {pid}) still running after the server stopped; stopping it",
              file=sys.stderr)
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


@contextlib.contextmanager
def fresh_server(workers: int, data_dir: Path | None = None, extra_env: dict[str, str] | None = None
                 ) -> Iterator[str]:
    """A server on a free loopback port with its own embedded PostgreSQL in `data_dir` (default: a
    temporary directory), with `extra_env` added to its environment."""
    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp:
        data_dir = data_dir or Path(tmp) / "data"
        log = Path(tmp) / "server.log"
        port = free_loopback_port()
        base_url = f"http://127.0.0.1:{port}/fhir"
        env = {name: value for name, value in os.environ.items() if name != "FHIR_DATABASE_URL"} | (extra_env or {})
        command = [sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--data-dir", str(data_dir), "--workers", str(workers)]
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            print(f"starting server ({workers} workers) at {base_url}, data in {data_dir}", file=sys.stderr)
            started = time.monotonic()
            wait_until_ready(base_url, process, log)
            print(f"server ready after {time.monotonic() - started:.1f} s", file=sys.stderr)
            yield base_url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"server did not stop within {SHUTDOWN_SECONDS} s of SIGTERM; killing it", file=sys.stderr)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            stop_leftover_postgres((data_dir / "postgres").resolve())


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", help="FHIR base of a running server on a loopback address, e.g. "
                                           "http://127.0.0.1:8080/fhir (default: start a fresh one)")
    parser.add_argument("--workers", type=int, default=2, help="server processes of the fresh server")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests of the concurrent runs")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per create/read/search run (default 2000)")
    parser.add_argument("--transactions", type=int, default=50,
                        help=f"transaction Bundles ({TRANSACTION_ENTRIES} entries each) per run (default 50)")
    parser.add_argument("--seconds", type=float, default=20, help="time limit per run (default 20)")
    parser.add_argument("--client", choices=CLIENTS, default="raw",
                        help="HTTP client of the measured requests: raw (bench/http1.py, little CPU per request; "
                             "default) or httpx, to compare")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args(argv)


def write_json(path: Path, base_url: str, options: argparse.Namespace, results: list[Result]) -> None:
    document = {
        "base_url": base_url,
        "fresh_server": options.base_url is None,
        "workers": options.workers if options.base_url is None else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "event_loop": event_loop_name(),
        "options": {"concurrency": options.concurrency, "requests": options.requests,
                    "transactions": options.transactions, "seconds": options.seconds, "client": options.client},
        "results": [result.as_json() for result in results],
        "targets_concurrent_requests_per_second": TARGETS_CONCURRENT,
        "medplum": {"version": MEDPLUM_VERSION, "concurrency": MEDPLUM_CONCURRENCY,
                    "requests_per_second": MEDPLUM},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


T = TypeVar("T")


def run_event_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on uvloop when it is installed: a cheaper loop leaves more of the CPUs to the server."""
    if uvloop is None:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def event_loop_name() -> str:
    return "asyncio" if uvloop is None else "uvloop"


def benchmark(base_url: str, options: argparse.Namespace) -> int:
    print(f"client: {options.client} on {event_loop_name()}", file=sys.stderr)
    results = run_event_loop(run_all(base_url.rstrip("/"), options))
    print_reference(results, options.concurrency)
    error_rate = report_errors(results)
    if options.json:
        write_json(options.json, base_url, options, results)
    if error_rate > MAX_ERROR_RATE:
        print(f"\n{error_rate:.1%} of requests failed (more than {MAX_ERROR_RATE:.0%})", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    options = parse_options()
    # SIGTERM unwinds like Ctrl-C, so a started server is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if options.base_url:
        if options.client == "raw" and urlsplit(options.base_url).scheme != "http":
            print(f"--client raw speaks plain http only, not {options.base_url}", file=sys.stderr)
            return 2
        if not is_loopback(urlsplit(options.base_url).hostname or ""):
            print(f"--base-url must be a loopback address, not {options.base_url}", file=sys.stderr)
            return 2
        return benchmark(options.base_url, options)
    try:
        with fresh_server(options.workers) as base_url:
            return benchmark(base_url, options)
    except ServerDidNotStart as exc:
        print(f"the server did not start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
