"""Overdue Tasks: each active Task with a due date (`restriction.period.end`) has outbox work due then; the
worker tags the Task `overdue` (meta.tag, system task-flag) if it is still active when the time comes.

The unit of work is keyed by the due date, so moving the date reschedules it and a new date after a flag
flags again. A client's write of a Task that is no longer active, or no longer late, drops the tag.
"""

from datetime import datetime, timezone
from typing import Any

from dateutil.parser import isoparse
from psycopg import AsyncConnection

from fhir_server.messaging.store import store
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.worker import outbox
from fhir_server.workflow.codes import OVERDUE, RECURRENCE_EXTENSION, TASK_FLAG, extension_value, has_tag, set_tag
from fhir_server.workflow.lifecycle import ACTIVE

TOPIC = "task-overdue"


def moment(value: Any) -> datetime | None:
    """A FHIR dateTime as an aware datetime (UTC when it has no zone; a date means its start)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = isoparse(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def due(task: dict[str, Any]) -> datetime | None:
    return moment(((task.get("restriction") or {}).get("period") or {}).get("end"))


def _targets(task: dict[str, Any] | None) -> list[str]:
    """The due date, for an active Task that is not a recurring template (its occurrences are due instead)."""
    when = due(task) if task is not None and task.get("status") in ACTIVE \
        and extension_value(task, RECURRENCE_EXTENSION, "String") is None else None
    return [when.isoformat()] if when is not None else []


async def task_written(conn: AsyncConnection, fhir_id: str, task: dict[str, Any] | None,
                       previous: dict[str, Any] | None) -> None:
    targets, previous_targets = _targets(task), _targets(previous)
    if not targets and not previous_targets:
        return
    await outbox.schedule(conn, TOPIC, "Task", fhir_id, targets=targets,
                          added=[target for target in targets if target not in previous_targets],
                          due_at=due(task) if targets else datetime.now(timezone.utc), priority=3)


def clear_stale_flag(task: dict[str, Any]) -> None:
    """Drop the overdue tag from a Task that is finished or whose due date now lies ahead."""
    if not has_tag(task, TASK_FLAG, OVERDUE):
        return
    when = due(task)
    if task.get("status") not in ACTIVE or when is None or when > datetime.now(timezone.utc):
        set_tag(task, TASK_FLAG, OVERDUE, False)


async def flag(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    stored = await repository.read(conn, "Task", row.fhir_id, for_update=True)
    if stored is None or stored.deleted:
        return
    task = stored.json()
    if task.get("status") not in ACTIVE or _targets(task) != [row.target] or has_tag(task, TASK_FLAG, OVERDUE):
        return
    set_tag(task, TASK_FLAG, OVERDUE, True)
    await store(conn, task)
