"""Recurring Tasks: a template Task carries an RFC 5545 recurrence (RRULE, python-dateutil) in an extension;
the worker creates each occurrence as a Task of its own when it falls due.

The next occurrence of each template is one outbox row, due at that time, so neither a restart nor a
long stop loses one (missed occurrences are made when the worker comes back, oldest first). An occurrence
has an id derived from the template and its instant, so making it twice is impossible.
"""

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from dateutil.rrule import rruleset, rrulestr
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.messaging.store import store
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.worker import outbox
from fhir_server.workflow.codes import (OCCURRENCE_IDENTIFIER, OCCURRENCE_OF_EXTENSION, RECURRENCE_EXTENSION,
                                        extension_value)
from fhir_server.workflow.lifecycle import ACTIVE
from fhir_server.workflow.overdue import moment

TOPIC = "task-recurrence"
# Elements of the template an occurrence does not take over: they describe the template, or a run of work.
NOT_COPIED = frozenset({"id", "meta", "text", "identifier", "extension", "status", "statusReason", "intent",
                        "businessStatus", "executionPeriod", "restriction", "authoredOn", "lastModified", "output"})


def recurrence(task: dict[str, Any] | None) -> rruleset | None:
    """The template's occurrences; None when it is not a template. 422 for a recurrence that cannot be used.

    DTSTART comes from the rule text, else from `executionPeriod.start`, else from `authoredOn`.
    """
    text = extension_value(task, RECURRENCE_EXTENSION, "String") if task else None
    if text is None:
        return None
    start = moment((task.get("executionPeriod") or {}).get("start")) or moment(task.get("authoredOn"))
    try:
        rules = rrulestr(text, dtstart=start, forceset=True)
        first = next(iter(rules), None)
    except (ValueError, TypeError) as error:
        raise FHIRError.of(422, "invalid", f"The recurrence '{text}' is not a usable RFC 5545 rule: {error}",
                           "Task.extension") from None
    if first is not None and first.tzinfo is None:
        raise FHIRError.of(422, "invalid", "The recurrence needs a start with a time zone: DTSTART with Z or "
                                           "TZID, or executionPeriod.start / authoredOn", "Task.extension")
    return rules


def _active(task: dict[str, Any] | None) -> bool:
    return task is not None and task.get("status") in ACTIVE - {"on-hold"}


def _next(task: dict[str, Any] | None, after: datetime, inclusive: bool) -> datetime | None:
    rules = recurrence(task) if _active(task) else None
    return rules.after(after, inc=inclusive) if rules is not None else None


async def _schedule(conn: AsyncConnection, template_id: str, when: datetime | None) -> None:
    targets = [when.isoformat()] if when is not None else []
    await outbox.schedule(conn, TOPIC, "Task", template_id, targets=targets, added=targets,
                          due_at=when or datetime.now(timezone.utc), priority=3)


def _key(task: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if not _active(task) or extension_value(task, RECURRENCE_EXTENSION, "String") is None:
        return None
    return (extension_value(task, RECURRENCE_EXTENSION, "String"), (task.get("executionPeriod") or {}).get("start"),
            task.get("authoredOn"))


async def task_written(conn: AsyncConnection, fhir_id: str, task: dict[str, Any] | None,
                       previous: dict[str, Any] | None) -> None:
    """A new or changed rule (or a template put on hold or back) starts over from the next occurrence."""
    key = _key(task)
    if key == _key(previous):
        return
    await _schedule(conn, fhir_id, _next(task, datetime.now(timezone.utc), True) if key else None)


def occurrence_id(template_id: str, when: datetime) -> str:
    return str(uuid5(NAMESPACE_URL, f"{OCCURRENCE_IDENTIFIER}/{template_id}/{when.isoformat()}"))


def occurrence(template: dict[str, Any], template_id: str, when: datetime) -> dict[str, Any]:
    """The Task for the occurrence at `when`: the template's work, requested, due as the template says."""
    task = {key: value for key, value in template.items() if key not in NOT_COPIED}
    task.update({
        "resourceType": "Task", "id": occurrence_id(template_id, when), "status": "requested", "intent": "order",
        "identifier": [{"system": OCCURRENCE_IDENTIFIER, "value": f"{template_id}/{repository.instant(when)}"}],
        "extension": [{"url": OCCURRENCE_OF_EXTENSION, "valueReference": {"reference": f"Task/{template_id}"}}],
        "authoredOn": repository.instant(datetime.now(timezone.utc)),
    })
    period = (template.get("restriction") or {}).get("period") or {}
    start, end = moment(period.get("start")), moment(period.get("end"))
    length = end - start if start and end and end > start else None
    restriction: dict[str, Any] = {"period": {"start": repository.instant(when)}}
    if length is not None:
        restriction["period"]["end"] = repository.instant(when + length)
    task["restriction"] = {**{k: v for k, v in (template.get("restriction") or {}).items() if k != "period"},
                           **restriction}
    return task


async def instantiate(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    stored = await repository.read(conn, "Task", row.fhir_id, for_update=True)
    template = stored.json() if stored is not None and not stored.deleted else None
    when = moment(row.target)
    if template is None or when is None or _next(template, when - timedelta(microseconds=1), True) != when:
        return  # no longer a template, or its rule changed (the change scheduled its own next occurrence)
    if await repository.read(conn, "Task", occurrence_id(row.fhir_id, when)) is None:
        await store(conn, occurrence(template, row.fhir_id, when))
    await _schedule(conn, row.fhir_id, _next(template, when, False))
