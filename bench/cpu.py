"""CPU per request of the server processes and of PostgreSQL, phase by phase (`make bench-cpu`).

Throughput on a shared machine swings with the other users' load; the CPU time that a request costs the
server (utime+stime of its processes, from /proc) and the database barely does. The phases run one request
at a time against one fresh server; after each, the run waits until the background job has turned the
phase's audit records into AuditEvents, whose CPU is counted apart. Last, what the idle server burns.
"""

from __future__ import annotations

import argparse
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
DRAIN_SECONDS = 120


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


async def run_phase(base_url: str, client_kind: str, send: load.Send, count: int) -> None:
    async with load.open_clients(client_kind, base_url, 1) as clients:
        result = await load.drive(clients, send, count, 3600, "cpu", 1)
    if result.errors:
        raise SystemExit(f"{result.errors} errors; first: {result.first_error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase (default 1000)")
    parser.add_argument("--transactions", type=int, default=20, help="transactions of 100 entries (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--phases", default="create,read,search,transaction",
                        help="comma-separated phases to run (reads and searches use the Patients created)")
    options = parser.parse_args()
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
