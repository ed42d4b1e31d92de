"""CPU per request of the server processes and of PostgreSQL, phase by phase (`make bench-cpu`).

Throughput on a shared machine swings with the other users' load; the CPU time that a request costs the
server (utime+stime of its processes, from /proc) and the database barely does. The phases run one request
at a time against one fresh server; after each, the run waits until the background job has turned the
phase's audit records into AuditEvents, whose CPU is counted apart. Last, what the idle server burns.

`--audit-overhead ROUNDS` compares reads with their audit on and off instead (FHIR_AUDIT_READS): two fresh
servers with the same Patients, read runs alternating between them, throughput and CPU per read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

if __package__:
    from . import load
else:
    import load

TICKS = os.sysconf("SC_CLK_TCK")
IDLE_SECONDS = 10
DRAIN_SECONDS = 300
MAX_AUDIT_OVERHEAD = 0.10


@dataclass
class Cpu:
    server: float
    postgres: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.server - other.server, self.postgres - other.postgres)


def _stat(pid: str) -> tuple[int, int, float] | None:
    """(parent pid, session id, CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / TICKS


def cpu_so_far(server: Server) -> Cpu:
    """CPU seconds so far of the server's processes (its session) and of its PostgreSQL (the postmaster and
    its children, each in a session of its own)."""
    total = Cpu(0.0, 0.0)
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (stat := _stat(pid)) is not None:
            if stat[1] == server.session:
                total.server += stat[2]
            elif server.postmaster in (int(pid), stat[0]):
                total.postgres += stat[2]
    return total


def wait_for_audit(server: Server) -> None:
    """Until the job has turned every audit record into an AuditEvent (the table stays empty for a second)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    empty_since = None
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT EXISTS (SELECT FROM audit_log)").fetchone()[0]:
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
            elif time.monotonic() - empty_since > 1:
                return
            time.sleep(0.1)
    raise SystemExit(f"audit records still waiting after {DRAIN_SECONDS} s")


@dataclass
class Server:
    session: int
    postmaster: int
    database_url: str


def find_server(base_url: str) -> Server:
    """The session of the server listening at `base_url` (bench/load.py starts it in a new one) and the
    postmaster of the PostgreSQL in its data directory."""
    port = f"--port\0{urlsplit(base_url).port}\0".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if port in arguments and (stat := _stat(pid)) is not None:
            argv = arguments.decode().split("\0")
            pgdata = Path(argv[argv.index("--data-dir") + 1]) / "postgres"
            postmaster = (pgdata / "postmaster.pid").read_text()
            return Server(stat[1], int(postmaster.split()[0]), f"postgresql://postgres:@/postgres?host={pgdata}")
    raise SystemExit(f"no server process found for {base_url}")


async def run_phase(base_url: str, client_kind: str, send: load.Send, count: int, concurrency: int = 1
                    ) -> load.Result:
    async with load.open_clients(client_kind, base_url, concurrency) as clients:
        result = await load.drive(clients, send, count, 3600, "cpu", 1)
    if result.errors:
        raise SystemExit(f"{result.errors} errors; first: {result.first_error}")
    return result


@dataclass
class AuditRound:
    """One read run against the server with read audits on (`audit`) or off: the client's view, and the CPU of
    the server and its PostgreSQL during the run and until its audit records were AuditEvents."""

    audit: bool
    result: load.Result
    during: Cpu
    total: Cpu

    def ms_per_read(self, cpu: Cpu) -> float:
        return 1000 * (cpu.server + cpu.postgres) / self.result.requests


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def report_audit_overhead(rounds: list[AuditRound]) -> None:
    """Medians of the rounds: the throughput lost, and the CPU per read with audits on against off."""
    on = [r for r in rounds if r.audit]
    off = [r for r in rounds if not r.audit]
    rows = [("throughput", "req/s", [r.result.requests_per_second for r in on],
             [r.result.requests_per_second for r in off], "during the reads", -1),
            ("cpu per read", "ms", [r.ms_per_read(r.during) for r in on], [r.ms_per_read(r.during) for r in off],
             "server + PostgreSQL, during the reads", 1),
            ("incl. after", "ms", [r.ms_per_read(r.total) for r in on], [r.ms_per_read(r.total) for r in off],
             "until the reads' AuditEvents are stored", 1)]
    print(f"\nread audit overhead, medians of {len(on)} rounds each (target <= {MAX_AUDIT_OVERHEAD:.0%}):")
    for name, unit, with_audit, without, what, sign in rows:
        audited, plain = _median(with_audit), _median(without)
        overhead = 100 * sign * (audited / plain - 1)
        print(f"  {name:<13} on {audited:9.3f} {unit:<5} off {plain:9.3f} {unit:<5} -> {overhead:+6.1f}%  ({what})")


def audit_overhead(options: argparse.Namespace) -> int:
    """Two fresh servers, read audits on and off, the same Patients on both; then read runs on each, the order
    alternating round by round so that drifts of the machine's load fall on both."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for audit in (True, False):
            base_url = stack.enter_context(load.fresh_server(options.workers, extra_env={
                "FHIR_AUDIT_READS": "true" if audit else "false"}))
            servers[audit] = (base_url, find_server(base_url), load.Workload())
        for base_url, server, workload in servers.values():
            load.run_event_loop(run_phase(base_url, "raw", workload.create, options.requests, options.concurrency))
            wait_for_audit(server)
        print(f"{'round':<6} {'audit':<5} {'reads':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'cpu ms/read':>12} {'incl. after':>12}", flush=True)
        rounds = []
        for number in range(options.audit_overhead):
            for audit in (True, False) if number % 2 == 0 else (False, True):
                base_url, server, workload = servers[audit]
                load.run_event_loop(run_phase(base_url, "raw", workload.read, load.WARMUP_REQUESTS,
                                              options.concurrency))
                before = cpu_so_far(server)
                result = load.run_event_loop(run_phase(base_url, "raw", workload.read, options.requests,
                                                       options.concurrency))
                during = cpu_so_far(server) - before
                wait_for_audit(server)
                done = AuditRound(audit, result, during, cpu_so_far(server) - before)
                rounds.append(done)
                print(f"{number + 1:<6} {'on' if audit else 'off':<5} {result.requests:>6} "
                      f"{result.requests_per_second:>8.0f} {result.percentile(50):>7.2f} "
                      f"{result.percentile(95):>7.2f} {done.ms_per_read(during):>12.3f} "
                      f"{done.ms_per_read(done.total):>12.3f}", flush=True)
    report_audit_overhead(rounds)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase (default 1000)")
    parser.add_argument("--transactions", type=int, default=20, help="transactions of 100 entries (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--phases", default="create,read,search,transaction",
                        help="comma-separated phases to run (reads and searches use the Patients created)")
    parser.add_argument("--audit-overhead", type=int, default=0, metavar="ROUNDS",
                        help="instead: ROUNDS read runs with read audits on and off (FHIR_AUDIT_READS), on two "
                             "fresh servers, alternating; throughput, CPU per read and the overhead")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent reads of --audit-overhead (default 8)")
    options = parser.parse_args()
    if options.audit_overhead:
        return audit_overhead(options)
    workload = load.Workload()
    phases = [("create", workload.create, options.requests), ("read", workload.read, options.requests),
              ("search", workload.search, options.requests),
              ("transaction", workload.transaction, options.transactions)]
    with load.fresh_server(options.workers) as base_url:
        server = find_server(base_url)
        load.run_event_loop(run_phase(base_url, "raw", workload.create, 50))  # warm up
        wait_for_audit(server)
        print(f"{'phase':<12} {'requests':>8} {'server ms/req':>13} {'postgres ms/req':>15} "
              f"{'audit job ms/req':>16}   (server+postgres)", flush=True)
        for phase, send, count in phases:
            if phase not in options.phases.split(","):
                continue
            before = cpu_so_far(server)
            load.run_event_loop(run_phase(base_url, "raw", send, count))
            during = cpu_so_far(server) - before
            before = cpu_so_far(server)
            wait_for_audit(server)
            after = cpu_so_far(server) - before
            print(f"{phase:<12} {count:>8} {1000 * during.server / count:>13.2f} "
                  f"{1000 * during.postgres / count:>15.2f} "
                  f"{1000 * (after.server + after.postgres) / count:>16.2f}", flush=True)
        before = cpu_so_far(server)
        time.sleep(IDLE_SECONDS)
        idle = cpu_so_far(server) - before
        print(f"idle: server {100 * idle.server / IDLE_SECONDS:.1f}% of a core, "
              f"postgres {100 * idle.postgres / IDLE_SECONDS:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
