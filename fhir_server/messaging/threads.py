"""Secure messaging between staff and patients: Communications in threads, read tracking, auto-replies.

- A thread is a root Communication (no `partOf`, no `inResponseTo`) and the messages whose `partOf` is the
  root; a reply names the message it answers in `inResponseTo`, and the server fills `partOf` with that
  message's root when the reply leaves it out. `Communication?part-of=Communication/<root>` is the thread.
- `category` comes from the message-category code system (terminology/messaging-code-systems.json).
- A message is `in-progress` until its recipient reads it, then `completed`: the server stamps the
  `communication-read` extension (and `received`, when absent) as it becomes completed. Unread counts are
  a standard search: `Communication?recipient=X&status=in-progress&_summary=count`.
- Assignment: the thread's root carries the extension `communication-assigned-to` (valueReference to a
  Practitioner, PractitionerRole or CareTeam, which must exist); `Communication?assigned-to=Practitioner/1` lists
  the threads assigned to someone, `Communication?part-of:Communication.assigned-to=Practitioner/1` their
  messages (resources/search-parameters-local.json defines `assigned-to`). Reassigning is an update of the root.
- Attachments: `payload.contentAttachment` (inline data becomes a Binary in the document store) or
  `payload.contentReference` to a DocumentReference; documents/hooks.py checks and fills them.
- Staff-only notes carry the security label v3-ActCode NOPAT (auth.enforce.HIDDEN_FROM_PATIENTS); tokens
  with patient/ scopes never see resources so labelled (dispatch.py).
- Auto-replies: when a Patient starts a thread in a category that has a template tagged
  `template-use|auto-reply` (messaging/templates.py), the worker answers in the thread with its text.
"""

from datetime import datetime, timezone
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.messaging.store import store
from fhir_server.messaging.templates import (KIND, MESSAGE_CATEGORY, TEMPLATE_CODE, TEMPLATE_USE, parse, render)
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.worker import outbox

READ_EXTENSION = "urn:fhir-server:StructureDefinition/communication-read"
"""On a Communication: when its recipient read it (valueDateTime)."""
AUTO_REPLY_IDENTIFIER = "urn:fhir-server:auto-reply"
"""Communication.identifier of an auto-reply: the id of the thread's root."""
ASSIGNED_TO_EXTENSION = "urn:fhir-server:StructureDefinition/communication-assigned-to"
"""On a thread's root Communication: who handles the thread (valueReference)."""
ASSIGNEE_TYPES = ("Practitioner", "PractitionerRole", "CareTeam")
CATEGORIES = frozenset({"prescription-refill", "appointment", "billing", "medical-question", "other"})
AUTO_REPLY_TOPIC = "auto-reply"


def category(communication: dict[str, Any] | None) -> str | None:
    for concept in (communication or {}).get("category") or []:
        for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
            if coding.get("system") == MESSAGE_CATEGORY:
                return coding.get("code")
    return None


def _local(reference: Any, resource_type: str) -> str | None:
    value = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(value, str) and value.startswith(resource_type + "/") and "/" not in value[len(resource_type) + 1:]:
        return value[len(resource_type) + 1:]
    return None


def starts_thread(communication: dict[str, Any]) -> bool:
    return not communication.get("partOf") and not communication.get("inResponseTo")


async def before_write(conn: AsyncConnection, communication: dict[str, Any]) -> None:
    """Fill the thread root of a reply; stamp the read time of a thread message as it becomes completed."""
    if communication.get("inResponseTo") and not communication.get("partOf"):
        answered = _local(communication["inResponseTo"][0], "Communication")
        stored = await repository.read(conn, "Communication", answered) if answered else None
        if stored is None or stored.deleted:
            raise FHIRError.of(422, "invalid", "inResponseTo must name an existing local Communication",
                               "Communication.inResponseTo")
        answered_message = stored.json()
        root = next((_local(part, "Communication") for part in answered_message.get("partOf") or []), None)
        communication["partOf"] = [{"reference": f"Communication/{root or answered}"}]
    await _check_assignment(conn, communication)
    if category(communication) is not None and communication.get("status") == "completed" and not any(
            extension.get("url") == READ_EXTENSION for extension in communication.get("extension") or []):
        now = repository.instant(datetime.now(timezone.utc))
        communication.setdefault("received", now)
        communication.setdefault("extension", []).append({"url": READ_EXTENSION, "valueDateTime": now})


async def _check_assignment(conn: AsyncConnection, communication: dict[str, Any]) -> None:
    assignments = [extension for extension in communication.get("extension") or []
                   if isinstance(extension, dict) and extension.get("url") == ASSIGNED_TO_EXTENSION]
    if not assignments:
        return
    path = "Communication.extension"
    if not starts_thread(communication):
        raise FHIRError.of(422, "business-rule", "A thread is assigned on its root message, not on a reply", path)
    if len(assignments) > 1:
        raise FHIRError.of(422, "business-rule", "A thread is assigned to one Practitioner, PractitionerRole or "
                                                 "CareTeam at a time", path)
    assignee = assignments[0].get("valueReference")
    found = next(((kind, fhir_id) for kind in ASSIGNEE_TYPES if (fhir_id := _local(assignee, kind)) is not None), None)
    stored = await repository.read(conn, *found) if found else None
    if stored is None or stored.deleted:
        raise FHIRError.of(422, "invalid", "The assignee must be an existing local "
                                           + ", ".join(ASSIGNEE_TYPES), path)


def _wants_auto_reply(communication: dict[str, Any] | None) -> bool:
    return communication is not None and starts_thread(communication) and category(communication) in CATEGORIES \
        and _local(communication.get("sender"), "Patient") is not None


async def communication_written(conn: AsyncConnection, fhir_id: str, communication: dict[str, Any] | None,
                                previous: dict[str, Any] | None) -> None:
    """A thread a Patient starts gets an auto-reply looked up by the worker (new threads only)."""
    if previous is None and _wants_auto_reply(communication):
        await outbox.schedule(conn, AUTO_REPLY_TOPIC, "Communication", fhir_id, targets=[""], added=[""],
                              due_at=datetime.now(timezone.utc), priority=2)


async def auto_reply_template(conn: AsyncConnection, code: str) -> dict[str, Any] | None:
    """The newest template tagged auto-reply for the message category `code`."""
    row = await (await conn.execute(
        "SELECT r.content FROM resource r WHERE r.resource_type = 'Basic' AND NOT r.deleted "
        "AND EXISTS (SELECT 1 FROM search_token t WHERE t.resource_id = r.id AND t.param = 'code' "
        "            AND t.system = %s AND t.code = %s) "
        "AND EXISTS (SELECT 1 FROM search_token t WHERE t.resource_id = r.id AND t.param = '_tag' "
        "            AND t.system = %s AND t.code = 'auto-reply') "
        "AND EXISTS (SELECT 1 FROM search_token t WHERE t.resource_id = r.id AND t.param = '_tag' "
        "            AND t.system = %s AND t.code = %s) "
        "ORDER BY r.last_updated DESC LIMIT 1",
        (KIND, TEMPLATE_CODE, TEMPLATE_USE, MESSAGE_CATEGORY, code),
    )).fetchone()
    return orjson.loads(row[0]) if row else None


async def auto_reply(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    stored = await repository.read(conn, "Communication", row.fhir_id)
    message = stored.json() if stored is not None and not stored.deleted else None
    if not _wants_auto_reply(message):
        return
    found = await auto_reply_template(conn, category(message))
    if found is None:
        return
    content = render(parse(found), "default", {})
    patient = message["sender"]
    reply: dict[str, Any] = {
        "resourceType": "Communication", "status": "in-progress",
        "identifier": [{"system": AUTO_REPLY_IDENTIFIER, "value": row.fhir_id}],
        "partOf": [{"reference": f"Communication/{row.fhir_id}"}],
        "inResponseTo": [{"reference": f"Communication/{row.fhir_id}"}],
        "category": message["category"], "subject": patient, "recipient": [patient],
        "sent": repository.instant(datetime.now(timezone.utc)), "payload": [{"contentString": content.body}],
    }
    await store(conn, reply)
