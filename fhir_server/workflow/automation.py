"""Automated Tasks: a Task whose `code` is in the task-automation code system is carried out by the worker
when it falls due (`restriction.period.start`, else at once), with its `input` as parameters; the result
is its `output` and a status of completed or failed (statusReason saying why).

Codes (terminology/workflow-code-systems.json):
- `send-message`: inputs `recipient` (Reference; default Task.for), `medium` (code sms | whatsapp | email;
  default sms), and `message` (string) or `template` (Reference to a message template) with the other
  string inputs as its variables. Output `communication-request`: the CommunicationRequest it made, which
  the notification dispatch then delivers.
- `send-appointment-reminder`: the same, with input `appointment` (Reference); without a message or
  template the text says when the appointment starts, and the template gets `start` as a variable.
A Task still waiting for the Tasks it depends on is tried again when one of them finishes, or after
WAIT_SECONDS (businessStatus says what it waits for).
"""

from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import AsyncConnection

from fhir_server.messaging.codes import CHANNEL_MEDIA, medium_concept
from fhir_server.messaging.store import store
from fhir_server.messaging.templates import TEMPLATE_VARIABLES_EXTENSION
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.worker import outbox
from fhir_server.workflow.codes import AUTOMATION, AUTOMATION_CODES, OVERDUE, TASK_FLAG, coding_in, set_tag
from fhir_server.workflow.lifecycle import FINISHED, unfinished_dependencies
from fhir_server.workflow.overdue import moment

TOPIC = "task-automation"
RUNNABLE = frozenset({"requested", "received", "accepted", "ready"})
WAIT_SECONDS = 60
"""How long a Task waiting for its dependencies waits before the worker looks again."""


class Refused(Exception):
    """The Task cannot be carried out as given; the message becomes its statusReason."""


def automation_code(task: dict[str, Any] | None) -> str | None:
    code = coding_in(task.get("code"), AUTOMATION) if task else None
    return code if code in AUTOMATION_CODES else None


def _wanted(task: dict[str, Any] | None) -> bool:
    return automation_code(task) is not None and task.get("status") in RUNNABLE


def due_at(task: dict[str, Any]) -> datetime:
    return moment(((task.get("restriction") or {}).get("period") or {}).get("start")) or datetime.now(timezone.utc)


async def task_written(conn: AsyncConnection, fhir_id: str, task: dict[str, Any] | None,
                       previous: dict[str, Any] | None) -> None:
    if task is not None and task.get("status") in FINISHED and (previous or {}).get("status") not in FINISHED:
        await _wake_dependents(conn, fhir_id)
    wanted, was_wanted = _wanted(task), _wanted(previous)
    if not wanted and not was_wanted:
        return
    targets = [""] if wanted else []
    await outbox.schedule(conn, TOPIC, "Task", fhir_id, targets=targets, added=targets if not was_wanted else [],
                          due_at=due_at(task) if wanted else datetime.now(timezone.utc),
                          priority={"stat": 0, "asap": 1, "urgent": 2}.get((task or {}).get("priority"), 3))


async def _wake_dependents(conn: AsyncConnection, fhir_id: str) -> None:
    """Automated Tasks waiting for Task/`fhir_id` (their basedOn) are tried again now rather than later."""
    await conn.execute(
        "UPDATE outbox o SET due_at = now(), updated_at = now() FROM search_reference b "
        "JOIN resource r ON r.id = b.resource_id "
        "WHERE b.resource_type = 'Task' AND b.param = 'based-on' AND b.target_type = 'Task' AND b.target_id = %s "
        "AND o.topic = %s AND o.resource_type = 'Task' AND o.fhir_id = r.fhir_id AND o.state = 'pending' "
        "AND o.due_at > now()",
        (fhir_id, TOPIC),
    )


def _inputs(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Inputs by name: the code of their type's first coding, or its text."""
    found = {}
    for item in task.get("input") or []:
        kind = item.get("type") or {}
        name = next((coding.get("code") for coding in kind.get("coding") or [] if coding.get("code")), None)
        found[name or kind.get("text")] = item
    return found


def _string(item: dict[str, Any] | None) -> str | None:
    if item is None:
        return None
    for kind in ("String", "Code", "Markdown", "DateTime", "Date", "Integer", "Decimal", "Boolean"):
        if "value" + kind in item:
            return str(item["value" + kind])
    return None


def _reference(item: dict[str, Any] | None) -> str | None:
    return ((item or {}).get("valueReference") or {}).get("reference")


async def _reminder_start(conn: AsyncConnection, reference: str | None) -> str | None:
    if not reference or not reference.startswith("Appointment/"):
        return None
    stored = await repository.read(conn, "Appointment", reference.partition("/")[2])
    if stored is None or stored.deleted:
        raise Refused(f"{reference} does not exist")
    return stored.json().get("start")


async def _request(conn: AsyncConnection, task: dict[str, Any], code: str) -> dict[str, Any]:
    """The CommunicationRequest that carries out a send-message or send-appointment-reminder Task."""
    inputs = _inputs(task)
    recipient = _reference(inputs.get("recipient")) or (task.get("for") or {}).get("reference")
    if not recipient:
        raise Refused("No recipient: give an input 'recipient' or Task.for")
    channel = _string(inputs.get("medium")) or "sms"
    if channel not in CHANNEL_MEDIA:
        raise Refused(f"Unknown medium '{channel}': one of {', '.join(sorted(CHANNEL_MEDIA))}")
    appointment = _reference(inputs.get("appointment"))
    start = await _reminder_start(conn, appointment) if code == "send-appointment-reminder" else None
    if code == "send-appointment-reminder" and not appointment:
        raise Refused("No input 'appointment' to remind of")
    template = _reference(inputs.get("template"))
    message = _string(inputs.get("message"))
    if template:
        variables = {name: _string(item) for name, item in inputs.items()
                     if name not in ("recipient", "medium", "appointment", "template", "message")
                     and _string(item) is not None}
        if start and "start" not in variables:
            variables["start"] = start
        payload = {"contentReference": {"reference": template},
                   "extension": [{"url": TEMPLATE_VARIABLES_EXTENSION,
                                  "extension": [{"url": name, "valueString": value}
                                                for name, value in sorted(variables.items())]}]}
    elif message or start:
        payload = {"contentString": message or f"Reminder: you have an appointment on {start}"}
    else:
        raise Refused("No input 'message' or 'template' to send")
    request: dict[str, Any] = {
        "resourceType": "CommunicationRequest", "status": "active",
        "basedOn": [{"reference": f"Task/{task['id']}"}],
        "recipient": [{"reference": recipient}], "medium": [medium_concept(channel)], "payload": [payload],
        "authoredOn": repository.instant(datetime.now(timezone.utc)),
    }
    if recipient.startswith("Patient/"):
        request["subject"] = {"reference": recipient}
    if appointment:
        request["about"] = [{"reference": appointment}]
    if task.get("priority") in ("routine", "urgent", "asap", "stat"):
        request["priority"] = task["priority"]
    return request


async def execute(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    stored = await repository.read(conn, "Task", row.fhir_id, for_update=True)
    task = stored.json() if stored is not None and not stored.deleted else None
    code = automation_code(task)
    if code is None or task.get("status") not in RUNNABLE:
        return
    waiting = await unfinished_dependencies(conn, task)
    if waiting:
        task["businessStatus"] = {"text": "Waiting for " + ", ".join(f"Task/{fhir_id}" for fhir_id, _ in waiting)}
        await store(conn, task)
        await outbox.schedule(conn, TOPIC, "Task", row.fhir_id, targets=[""], added=[""], priority=3,
                              due_at=datetime.now(timezone.utc) + timedelta(seconds=WAIT_SECONDS))
        return
    now = repository.instant(datetime.now(timezone.utc))
    task["executionPeriod"] = {"start": now, "end": now}
    task.pop("businessStatus", None)
    set_tag(task, TASK_FLAG, OVERDUE, False)
    try:
        created = await store(conn, await _request(conn, task, code))
    except Refused as refusal:
        task["status"] = "failed"
        task["statusReason"] = {"text": str(refusal)}
    else:
        task["status"] = "completed"
        task["output"] = [{"type": {"coding": [{"system": AUTOMATION, "code": "communication-request"}]},
                           "valueReference": {"reference": f"CommunicationRequest/{created.fhir_id}"}}]
    await store(conn, task)
