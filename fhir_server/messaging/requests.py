"""CommunicationRequest writes -> outbox rows: one unit of work per recipient, due at occurrenceDateTime.

Only active requests whose medium names one of our channels are ours; other CommunicationRequests cost
nothing. Re-activating a request (e.g. after a dead letter put it on hold) starts its work again; the
worker's own updates of an active request (attempt counts) change nothing here.
"""

from datetime import datetime, timezone
from typing import Any

from dateutil.parser import isoparse
from psycopg import AsyncConnection

from fhir_server.messaging.codes import channel_of
from fhir_server.worker import outbox

TOPIC = "notification"
PRIORITY = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}


def _wanted(resource: dict[str, Any] | None) -> bool:
    return resource is not None and resource.get("status") == "active" \
        and channel_of(resource.get("medium")) is not None


def _targets(resource: dict[str, Any]) -> list[str]:
    """The recipients' references; '' stands for a request without any, which then fails visibly."""
    references = [recipient.get("reference") for recipient in resource.get("recipient") or []
                  if isinstance(recipient, dict)]
    return list(dict.fromkeys(reference for reference in references if isinstance(reference, str))) or [""]


def due_at(resource: dict[str, Any]) -> datetime:
    """occurrenceDateTime (or occurrencePeriod.start); now if absent. A date without time means its start, UTC."""
    value = resource.get("occurrenceDateTime") or (resource.get("occurrencePeriod") or {}).get("start")
    if not value:
        return datetime.now(timezone.utc)
    moment = isoparse(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


async def communication_request_written(conn: AsyncConnection, fhir_id: str, resource: dict[str, Any] | None,
                                        previous: dict[str, Any] | None) -> None:
    targets = _targets(resource) if _wanted(resource) else []
    previous_targets = _targets(previous) if _wanted(previous) else []
    if not targets and not previous_targets:
        return
    added = [target for target in targets if target not in previous_targets]
    await outbox.schedule(conn, TOPIC, "CommunicationRequest", fhir_id, targets=targets, added=added,
                          due_at=due_at(resource) if targets else datetime.now(timezone.utc),
                          priority=PRIORITY.get((resource or {}).get("priority"), 3))
