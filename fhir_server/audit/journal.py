"""The audit journal of one server process: records of reads are appended to a local file before the
response goes out, and moved into the `audit_log` table in bulk every `audit_flush_seconds`.

A record is stored in the schema of the tenant it was made in (FHIR_TENANCY=url): each line is the tenant's
name (empty without tenancy), a tab, and the AuditEvent. Each process writes its own file and holds an
exclusive flock on it; a file that can be locked belongs to no live process (it crashed, or a flush failed)
and is replayed into the table by whichever process finds it, at start-up and on every flush. A record is
copied into the segment's shared memory map (no system call on the request path), which is the kernel's page
cache of the file, as a write(2) would be: it survives the death of the process (SIGKILL included) but not a
crash of the machine before the flush: that window is `audit_flush_seconds`. Segments are sparse files of
`SEGMENT_BYTES`, NUL where nothing was written yet. Replaying is idempotent (records carry their id; the
table ignores known ids).
"""

import asyncio
from collections import defaultdict
import fcntl
import logging
import mmap
import os
import time
from contextlib import suppress
from pathlib import Path
from uuid import uuid4

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fhir_server.storage import tenants

log = logging.getLogger(__name__)

SUFFIX = ".audit.ndjson"
SEGMENT_BYTES = 16 << 20
"""A segment's mapped size; records beyond it (more than a flush interval can bring) are appended with write(2)."""
BUSY_RATE = 20
# Arrays go in binary (%b): as text, psycopg escapes every element of the bytea array with a regex, which cost
# more than building the record itself.
_INSERT_MANY = ("INSERT INTO audit_log (id, event) SELECT * FROM unnest(%b::text[]::uuid[], %b::bytea[]) "
                "ON CONFLICT (id) DO NOTHING")


async def insert(conn: AsyncConnection, records: list[tuple[str, bytes]]) -> None:
    """Store records in `audit_log` (in the caller's transaction, if any), skipping ids already there."""
    if len(records) == 1:
        await conn.execute("INSERT INTO audit_log (id, event) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                           records[0], prepare=True)
    elif records:
        await conn.execute(_INSERT_MANY, ([record[0] for record in records], [record[1] for record in records]))


def lines(path: Path) -> list[bytes]:
    """The records of a segment, without the NUL bytes of its unwritten part."""
    return [line for line in path.read_bytes().replace(b"\0", b"").split(b"\n") if line]


class Journal:
    """Append-only segments of audit records, flushed to the database by a task on the server's loop."""

    def __init__(self, directory: Path, pool: AsyncConnectionPool, interval: float) -> None:
        self.directory = directory
        self.pool = pool
        self.interval = interval
        self.path: Path | None = None
        self.fd = -1
        self.map: mmap.mmap | None = None
        self.offset = 0
        self.pending: list[tuple[str, str, bytes]] = []
        self.task: asyncio.Task | None = None
        self.recorded = 0
        """Interactions audited by this process so far (reads and writes): how busy it is."""
        self._seen = (0, time.monotonic())

    def busy(self) -> bool:
        """Whether more than `BUSY_RATE` interactions a second were audited since the last call."""
        count, since = self._seen
        self._seen = (self.recorded, time.monotonic())
        return self.recorded - count > BUSY_RATE * (self._seen[1] - since)

    def _open_segment(self) -> None:
        # Locked under a name the replay does not look at, then renamed: no other process can take a
        # segment for an orphan between its creation and its lock.
        self.path = self.directory / f"{os.getpid()}-{uuid4().hex}{SUFFIX}"
        creating = self.path.with_suffix(".new")
        self.fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, SEGMENT_BYTES)
        self.map, self.offset = mmap.mmap(self.fd, SEGMENT_BYTES), 0
        creating.rename(self.path)
        self.pending = []

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment()
        await self._replay_orphans()
        self.task = asyncio.create_task(self._flush_forever(), name="audit-journal")

    def append(self, event_id: str, event: bytes) -> None:
        """Called on the request path: a copy into the mapped segment, no waiting for the database."""
        tenant = tenants.current.get()
        name = tenant.name if tenant is not None else ""
        line = name.encode() + b"\t" + event + b"\n"
        end = self.offset + len(line)
        assert self.map is not None
        if end <= SEGMENT_BYTES:
            self.map[self.offset:end] = line
            self.offset = end
        else:
            os.write(self.fd, line)  # O_APPEND: after the mapped part
        self.pending.append((name, event_id, event))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        await self.flush()
        self._close(self.fd, self.map)
        if self.path is not None and not self.pending:
            self.path.unlink(missing_ok=True)

    async def flush(self) -> None:
        """Move the current segment's records into the table; new records go to a fresh segment meanwhile."""
        if not self.pending:
            return
        path, fd, segment, records = self.path, self.fd, self.map, self.pending
        self._open_segment()
        try:
            await self._store(records)
        except (psycopg.Error, OSError) as error:
            log.warning("audit journal: %s; %s is replayed later", error, path)
        else:
            path.unlink(missing_ok=True)
        finally:
            self._close(fd, segment)  # unlocked: a segment still on disk is an orphan that the next replay picks up

    @staticmethod
    def _close(fd: int, segment: mmap.mmap | None) -> None:
        if segment is not None:
            segment.close()
        os.close(fd)

    async def _replay_orphans(self) -> None:
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process's segment
            try:
                records = []
                for line in lines(path):
                    name, _, event = line.partition(b"\t")
                    with suppress(orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                        records.append((name.decode(), orjson.loads(event)["id"], event))  # a torn line is skipped
                await self._store(records)
                path.unlink(missing_ok=True)
            except (psycopg.Error, OSError) as error:
                log.warning("audit journal: replaying %s failed: %s", path, error)
            finally:
                os.close(fd)

    async def _store(self, records: list[tuple[str, str, bytes]]) -> None:
        """Insert (tenant name, id, event) records, each in its tenant's schema."""
        by_tenant: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for name, event_id, event in records:
            by_tenant[name].append((event_id, event))
        for name, rows in by_tenant.items():
            try:
                tenant = await self.pool.resolve(name) if name else None
            except tenants.UnknownTenant:
                log.warning("audit journal: %s records of the removed tenant %r dropped", len(rows), name)
                continue
            selected = tenants.current.set(tenant)
            try:
                async with self.pool.connection() as conn:
                    await insert(conn, rows)
            finally:
                tenants.current.reset(selected)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
                await self._replay_orphans()
            except Exception:
                log.exception("audit journal flush failed; the records stay on disk")
