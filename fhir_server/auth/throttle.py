"""Failed sign-ins and client authentications, counted per (user name or client id, address) in a sliding window.

Past `auth_max_failed_attempts` failures within `auth_failure_window` seconds, further attempts are refused
with 429 and Retry-After, without checking the password, until the oldest of those failures leaves the
window. The counts live in PostgreSQL so that every server process sees them; attempts with the same key
wait for each other (an advisory lock), so concurrent guesses cannot overrun the limit. Keys are SHA-256
digests: neither the names tried (sometimes a password typed into the wrong field) nor addresses are stored.
"""

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from psycopg import AsyncConnection

from fhir_server.settings import Settings


class TooManyFailures(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(slots=True)
class Attempt:
    """The caller sets `failed` when the credentials were wrong."""

    failed: bool = False


def attempt_key(kind: str, name: str, request: Request) -> str:
    address = request.client.host if request.client else ""
    return hashlib.sha256(f"{kind}\0{name}\0{address}".encode()).hexdigest()


@asynccontextmanager
async def attempt(conn: AsyncConnection, key: str, settings: Settings) -> AsyncIterator[Attempt]:
    """One attempt under `key` (autocommit connection): TooManyFailures while the key is throttled; a failed
    attempt is counted, a successful one clears the key's failures."""
    limit, window = settings.auth_max_failed_attempts, settings.auth_failure_window
    current = Attempt()
    if limit <= 0:
        yield current
        return
    lock = int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
    try:
        # The limit-th newest failure: once it leaves the window, fewer than `limit` remain in it.
        row = await (await conn.execute(
            "SELECT ceil(extract(epoch FROM failed_at + make_interval(secs => %s) - now()))::int "
            "FROM auth_failure WHERE key_hash = %s AND failed_at > now() - make_interval(secs => %s) "
            "ORDER BY failed_at DESC OFFSET %s LIMIT 1", (window, key, window, limit - 1))).fetchone()
        if row is not None:
            raise TooManyFailures(max(row[0], 1))
        try:
            yield current
        finally:
            if current.failed:
                await conn.execute("DELETE FROM auth_failure WHERE failed_at <= now() - make_interval(secs => %s)",
                                   (window,))
                await conn.execute("INSERT INTO auth_failure (key_hash) VALUES (%s)", (key,))
            else:
                await conn.execute("DELETE FROM auth_failure WHERE key_hash = %s", (key,))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
