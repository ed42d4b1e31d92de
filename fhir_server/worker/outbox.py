"""The outbox table: work recorded with the resource change that causes it, claimed and settled by the workers.

States: pending -> queued (handed to the broker) -> sending (an attempt in flight) -> done | dead | cancelled;
a retry puts a row back to pending with a later `due_at`. See migrations/versions/0005_outbox.py.
"""

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection

LIVE = ("pending", "queued", "sending")
FINAL = ("done", "dead", "cancelled")

# One statement for any write of a resource with side effects: rows for targets no longer wanted are
# cancelled (unless an attempt is in flight), not-yet-tried rows follow a changed due time or priority,
# and newly wanted targets get a row (the partial unique index keeps one live row per target).
_SCHEDULE = """
WITH dropped AS (
    UPDATE outbox SET state = 'cancelled', updated_at = now()
    WHERE topic = %(topic)s AND resource_type = %(resource_type)s AND fhir_id = %(fhir_id)s
      AND state IN ('pending', 'queued') AND attempt_ref IS NULL AND NOT (target = ANY(%(targets)s))
), moved AS (
    UPDATE outbox SET due_at = %(due_at)s, priority = %(priority)s, updated_at = now()
    WHERE topic = %(topic)s AND resource_type = %(resource_type)s AND fhir_id = %(fhir_id)s
      AND state = 'pending' AND attempts = 0 AND target = ANY(%(targets)s)
)
INSERT INTO outbox (topic, resource_type, fhir_id, target, priority, due_at)
SELECT %(topic)s, %(resource_type)s, %(fhir_id)s, added, %(priority)s, %(due_at)s FROM unnest(%(added)s::text[]) AS added
ON CONFLICT (topic, resource_type, fhir_id, target) WHERE state IN ('pending', 'queued', 'sending') DO NOTHING
"""

# Due work, best priority first, plus work whose lease ran out (a lost message or a crashed worker).
_CLAIM = """
WITH claimed AS (
    SELECT id FROM outbox
    WHERE (state = 'pending' AND due_at <= now()) OR (state IN ('queued', 'sending') AND lease_until <= now())
    ORDER BY priority, due_at, id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET state = 'queued', lease_until = now() + make_interval(secs => %s), updated_at = now()
FROM claimed WHERE o.id = claimed.id
RETURNING o.id, o.topic, o.priority, o.due_at
"""


async def next_due_in(conn: AsyncConnection) -> float | None:
    """Seconds until a row can next be claimed (negative: due already), by the database's clock; None if no
    work is live."""
    row = await (await conn.execute(
        "SELECT extract(epoch FROM least("
        "(SELECT min(due_at) FROM outbox WHERE state = 'pending'), "
        "(SELECT min(lease_until) FROM outbox WHERE state IN ('queued', 'sending'))) - now())::float8"
    )).fetchone()
    return row[0]


@dataclass(slots=True)
class Row:
    id: int
    topic: str
    resource_type: str
    fhir_id: str
    target: str
    state: str
    attempts: int
    due: bool
    """`due_at` has passed."""
    leased: bool
    """`lease_until` lies ahead."""
    attempt_ref: str | None
    """The id of the record of the attempt in flight (a Communication), set while sending."""
    last_error: str | None


async def schedule(conn: AsyncConnection, topic: str, resource_type: str, fhir_id: str, *, targets: list[str],
                   added: list[str], due_at: datetime, priority: int) -> None:
    """Make the live work of one resource match `targets`; `added` are the targets to start work for."""
    await conn.execute(_SCHEDULE, {"topic": topic, "resource_type": resource_type, "fhir_id": fhir_id,
                                   "targets": targets, "added": added, "due_at": due_at, "priority": priority})


async def add_many(conn: AsyncConnection, topic: str, resource_type: str, work: list[tuple[str, str]], *,
                   due_at: datetime, priority: int) -> None:
    """New work for resources just created: one row per (fhir_id, target), in one statement."""
    await conn.execute(
        "INSERT INTO outbox (topic, resource_type, fhir_id, target, priority, due_at) "
        "SELECT %s, %s, fhir_id, target, %s, %s FROM unnest(%s::text[], %s::text[]) AS w(fhir_id, target)",
        (topic, resource_type, priority, due_at, [fhir_id for fhir_id, _ in work], [target for _, target in work]),
    )


async def claim(conn: AsyncConnection, limit: int, lease_seconds: float) -> list[tuple[int, str, int, datetime]]:
    """Mark up to `limit` rows queued for `lease_seconds` and return (id, topic, priority, due_at), in order.

    Run it in the transaction that also hands them to the broker: if that fails, nothing changed.
    """
    rows = await (await conn.execute(_CLAIM, (limit, lease_seconds))).fetchall()
    return sorted(rows, key=lambda row: (row[2], row[3], row[0]))


async def lock(conn: AsyncConnection, outbox_id: int) -> Row | None:
    """The row, locked until the transaction ends (waiting for a relay that has not committed yet)."""
    row = await (await conn.execute(
        "SELECT id, topic, resource_type, fhir_id, target, state, attempts, due_at <= now(), "
        "coalesce(lease_until > now(), false), attempt_ref, last_error FROM outbox WHERE id = %s FOR UPDATE",
        (outbox_id,),
    )).fetchone()
    return Row(*row) if row else None


async def start_attempt(conn: AsyncConnection, outbox_id: int, attempt_ref: str, lease_seconds: float) -> None:
    await conn.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, attempt_ref = %s, "
        "lease_until = now() + make_interval(secs => %s), updated_at = now() WHERE id = %s",
        (attempt_ref, lease_seconds, outbox_id),
    )


async def settle(conn: AsyncConnection, outbox_id: int, state: str, *, error: str | None = None,
                 retry_in: float | None = None, count_attempt: bool = False) -> None:
    """End the current attempt: `state` done, dead or cancelled, or pending again after `retry_in` seconds."""
    await conn.execute(
        "UPDATE outbox SET state = %s, last_error = %s, attempt_ref = NULL, lease_until = NULL, "
        "attempts = attempts + %s, due_at = CASE WHEN %s::float8 IS NULL THEN due_at "
        "ELSE now() + make_interval(secs => %s::float8) END, updated_at = now() WHERE id = %s",
        (state, error, int(count_attempt), retry_in, retry_in, outbox_id),
    )


@dataclass(slots=True)
class Progress:
    """The work of one resource as a whole: how many rows are live or dead, and the retry schedule."""

    live: int
    dead: int
    attempts: int
    next_attempt: datetime | None
    last_error: str | None


async def progress(conn: AsyncConnection, topic: str, resource_type: str, fhir_id: str) -> Progress:
    """Over the latest row of each target (earlier rounds of work on the same resource do not count)."""
    row = await (await conn.execute(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'queued', 'sending')), "
        "count(*) FILTER (WHERE state = 'dead'), coalesce(max(attempts), 0), "
        "min(due_at) FILTER (WHERE state = 'pending' AND attempts > 0), "
        "(array_agg(last_error ORDER BY updated_at DESC) FILTER (WHERE state = 'dead'))[1] "
        "FROM (SELECT DISTINCT ON (target) * FROM outbox "
        "      WHERE topic = %s AND resource_type = %s AND fhir_id = %s AND state <> 'cancelled' "
        "      ORDER BY target, id DESC) latest",
        (topic, resource_type, fhir_id),
    )).fetchone()
    return Progress(*row)
