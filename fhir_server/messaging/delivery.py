"""One delivery attempt of a CommunicationRequest to one recipient, recorded as a Communication.

An attempt runs in three steps so that a message is never sent twice:
1. in one transaction: lock the outbox row, check it still needs work, create the Communication
   (in-progress) and mark the row `sending` under a lease;
2. send, outside any transaction;
3. in one transaction: record the result on the Communication, settle the row (done, retry later, dead)
   and bring the CommunicationRequest up to date.
A redelivered message finds the row settled, or leased by the attempt in flight, and does nothing. A
row whose attempt never finished (the worker died during step 2) is not sent again: its Communication
becomes `unknown` and the request goes on hold with statusReason `delivery-outcome-unknown`.
"""

import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.messaging import channels, consent, recipients, templates
from fhir_server.messaging.channels import SendResult
from fhir_server.messaging.codes import (ATTEMPT_IDENTIFIER, DELIVERY_EXTENSION, PROVIDER_IDENTIFIERS,
                                         PROVIDER_STATUS_EXTENSION, channel_of, medium_concept, status_reason)
from fhir_server.messaging.requests import TOPIC
from fhir_server.messaging.store import store
from fhir_server.settings import Settings
from fhir_server.storage import repository, tenants
from fhir_server.storage.repository import instant
from fhir_server.worker import dead_letter, outbox
from fhir_server.worker.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_EMAIL_BODY = "You have a new message"
# Twilio's message statuses in the order they happen; a callback never moves a Communication backwards,
# and a terminal one (delivered and on, failed, undelivered) stays.
PROVIDER_STATUS_RANK = {"accepted": 0, "scheduled": 0, "queued": 1, "sending": 2, "sent": 3,
                        "delivered": 4, "undelivered": 4, "failed": 4, "read": 5}
PROVIDER_FAILURES = frozenset({"undelivered", "failed"})


@dataclass(slots=True)
class Attempt:
    outbox_id: int
    request_id: str
    communication_id: str
    channel: str
    address: str
    body: str
    number: int
    subject: str | None = None


def deliver(runtime: Runtime, outbox_id: int) -> None:
    """The `notification` actor: runs in a worker thread; database steps run on the runtime's event loop."""
    attempt = runtime.run(_visibly(runtime, outbox_id, _begin(runtime, outbox_id)))
    if attempt is None:
        return
    callback = runtime.settings.twilio_status_callback_url
    if callback:
        tenant = tenants.current.get()
        if tenant is not None:  # each tenant's callbacks come back below its own base
            callback = callback.replace("{tenant}", tenant.name)
        callback += ("&" if "?" in callback else "?") + "communication=" + quote(attempt.communication_id)
    result = channels.send(runtime.settings, attempt.channel, attempt.address, attempt.body, callback,
                           attempt.subject)
    runtime.run(_visibly(runtime, outbox_id, _finish(runtime, attempt, result)))


async def _visibly(runtime: Runtime, outbox_id: int, step: Coroutine[Any, Any, T]) -> T | None:
    """Run a database step of an attempt. A database error is left to Dramatiq's retries; any other (a bug,
    bad stored data) gives the work up visibly rather than retrying it for ever in silence. Cancellation (a
    stopping worker) is no Exception, so it never passes for a failure."""
    try:
        return await step
    except psycopg.OperationalError:
        raise
    except Exception as error:
        log.exception("notification (outbox row %s) failed", outbox_id)
        await _give_up(runtime, outbox_id, dead_letter.describe(error))
        return None


def _now() -> str:
    return instant(datetime.now(timezone.utc))


def _text(request: dict[str, Any]) -> str | None:
    texts = [part["contentString"] for part in request.get("payload") or []
             if isinstance(part, dict) and isinstance(part.get("contentString"), str)]
    return "\n\n".join(texts) if texts else None


def _communication(request: dict[str, Any], row: outbox.Row, channel: str, number: int) -> dict[str, Any]:
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": ATTEMPT_IDENTIFIER, "value": f"{row.id}-{number}"}],
        "basedOn": [{"reference": f"CommunicationRequest/{row.fhir_id}"}],
        "status": "in-progress",
        "medium": [medium_concept(channel)],
    }
    for element in ("category", "priority", "subject", "encounter", "about"):
        if request.get(element):
            communication[element] = request[element]
    if "subject" not in communication and row.target.startswith("Patient/"):
        communication["subject"] = {"reference": row.target}
    if row.target:
        communication["recipient"] = [{"reference": row.target}]
    return communication


def _not_done(communication: dict[str, Any], reason: str, detail: str | None) -> None:
    communication["status"] = "not-done"
    communication["statusReason"] = status_reason(reason, detail)


async def _begin(runtime: Runtime, outbox_id: int) -> Attempt | None:
    settings = runtime.settings
    async with runtime.pool.connection() as conn, conn.transaction():
        row = await outbox.lock(conn, outbox_id)
        if row is None or row.state in outbox.FINAL or (row.state == "sending" and row.leased) \
                or (row.state == "pending" and not row.due):
            return None  # redelivered, in flight elsewhere, or rescheduled meanwhile
        if row.attempt_ref is not None:
            await _conclude_unknown(conn, settings, row)
            return None
        stored = await repository.read(conn, "CommunicationRequest", row.fhir_id)
        request = stored.json() if stored is not None else {}
        channel = channel_of(request.get("medium"))
        if request.get("status") != "active" or channel is None:
            await outbox.settle(conn, row.id, "cancelled")
            return None
        number = row.attempts + 1
        communication = _communication(request, row, channel, number)
        text, subject, phi, template_problem = _text(request), None, False, None
        if templates.payload_template(request) is not None:
            try:
                rendered, phi = await templates.render_request(conn, request, channel)
                text, subject = rendered.body, rendered.subject
            except FHIRError as error:
                template_problem = str(error)
        address = recipients.Address(None)
        if not channels.configured(settings, channel):
            problem = ("channel-not-configured", f"No {channel} channel is configured on this server")
        elif template_problem is not None:
            problem = ("no-content", f"The message template could not be rendered: {template_problem}")
        elif text is None:
            problem = ("no-content", "The CommunicationRequest has no payload.contentString to send")
        else:
            address = await recipients.resolve(conn, row.target, channel, settings.default_phone_region)
            problem = address.problem
            if problem is None and await consent.opted_out(conn, row.target, channel):
                problem = ("opted-out", f"{row.target} has opted out of {channel} messages")
        if problem is not None:
            _not_done(communication, *problem)
            await store(conn, communication)
            await outbox.settle(conn, row.id, "dead", error=problem[0], count_attempt=True)
            await _update_request(conn, row.fhir_id)
            return None
        # An e-mail carries the text only when the server or the template allows PHI in e-mail.
        with_content = channel != "email" or settings.email_include_content or phi
        body = text if with_content else DEFAULT_EMAIL_BODY
        communication["payload"] = [{"contentString": body}]
        created = await store(conn, communication)
        await outbox.start_attempt(conn, row.id, created.fhir_id, settings.send_lease_seconds)
        return Attempt(row.id, row.fhir_id, created.fhir_id, channel, address.value, body, number,
                       subject if with_content else None)


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the retry that follows attempt number `attempts`: doubling, capped, 0-10% jitter."""
    delay = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempts - 1))
    return delay * (1 + random.random() / 10)


async def _finish(runtime: Runtime, attempt: Attempt, result: SendResult) -> None:
    settings = runtime.settings
    async with runtime.pool.connection() as conn, conn.transaction():
        row = await outbox.lock(conn, attempt.outbox_id)
        stored = await repository.read(conn, "Communication", attempt.communication_id, for_update=True)
        communication = stored.json()
        if result.outcome == "sent":
            if provider_status(communication) not in PROVIDER_FAILURES:  # a callback may have come first
                communication["status"] = "completed"
            communication["sent"] = _now()
            communication["identifier"].append({
                "system": result.provider_system or PROVIDER_IDENTIFIERS[attempt.channel], "value": result.provider_id})
            apply_provider_status(communication, result.provider_status)
        elif result.outcome == "unknown":
            communication["status"] = "unknown"
            communication["statusReason"] = status_reason("delivery-outcome-unknown", result.detail)
        else:
            _not_done(communication, result.reason, result.detail)
        await store(conn, communication)
        if row is None or row.attempt_ref != attempt.communication_id:
            return  # the attempt was given up as unknown meanwhile; its Communication now tells the truth
        if result.outcome == "sent":
            await outbox.settle(conn, row.id, "done")
        elif result.outcome == "retry" and attempt.number < settings.retry_max_attempts.get(attempt.channel, 1):
            await outbox.settle(conn, row.id, "pending", error=result.reason,
                                retry_in=backoff(settings, attempt.number))
        else:
            error = "max-attempts-exceeded" if result.outcome == "retry" else result.reason
            await outbox.settle(conn, row.id, "dead", error=error)
        await _update_request(conn, attempt.request_id)


async def _give_up(runtime: Runtime, outbox_id: int, error: str) -> None:
    """Dead-letter the work with a failed Task; an attempt in flight becomes `unknown` (it may have been sent),
    and then, in a transaction of its own so that the Task stays whatever happens, the request goes on hold."""
    async with runtime.pool.connection() as conn, conn.transaction():
        row = await outbox.lock(conn, outbox_id)
        if row is None or row.state in outbox.FINAL:
            return
        if row.attempt_ref is not None:
            await _unknown(conn, row.attempt_ref, f"The attempt failed inside the server ({error}); it is not "
                                                  "repeated, as the message may have been sent")
        await dead_letter.record(conn, row, error, settled_as="internal-error")
    async with runtime.pool.connection() as conn, conn.transaction():
        await _update_request(conn, row.fhir_id)


async def _unknown(conn: AsyncConnection, communication_id: str, detail: str) -> None:
    stored = await repository.read(conn, "Communication", communication_id, for_update=True)
    if stored is not None and not stored.deleted:
        communication = stored.json()
        if communication.get("status") == "in-progress":
            communication["status"] = "unknown"
            communication["statusReason"] = status_reason("delivery-outcome-unknown", detail)
            await store(conn, communication)


async def _conclude_unknown(conn: AsyncConnection, settings: Settings, row: outbox.Row) -> None:
    """The attempt in flight was abandoned (its worker died): say so, and do not send again."""
    await _unknown(conn, row.attempt_ref, "The worker stopped during this attempt; it is not repeated so that "
                                          "the message is never sent twice")
    await outbox.settle(conn, row.id, "dead", error="delivery-outcome-unknown")
    await _update_request(conn, row.fhir_id)


async def _update_request(conn: AsyncConnection, request_id: str) -> None:
    """Completed when every recipient got the message, on hold (statusReason) when any dead-lettered and
    nothing is left to try; while work remains, active with the attempt count and next attempt time."""
    stored = await repository.read(conn, "CommunicationRequest", request_id, for_update=True)
    if stored is None or stored.deleted:
        return
    request = stored.json()
    if request.get("status") != "active":
        return  # revoked or changed by someone meanwhile: theirs is the last word
    progress = await outbox.progress(conn, TOPIC, "CommunicationRequest", request_id)
    extensions = [extension for extension in request.get("extension") or []
                  if extension.get("url") != DELIVERY_EXTENSION]
    delivery: list[dict[str, Any]] = [{"url": "attempts", "valueInteger": progress.attempts}]
    if progress.live and progress.next_attempt is not None:
        delivery.append({"url": "nextAttempt", "valueDateTime": instant(progress.next_attempt)})
    request["extension"] = extensions + [{"url": DELIVERY_EXTENSION, "extension": delivery}]
    if not progress.live:
        if progress.dead:
            request["status"] = "on-hold"
            request["statusReason"] = status_reason(progress.last_error or "max-attempts-exceeded")
        else:
            request["status"] = "completed"
    await store(conn, request)


def provider_status(communication: dict[str, Any]) -> str | None:
    return next((extension.get("valueCode") for extension in communication.get("extension") or []
                 if extension.get("url") == PROVIDER_STATUS_EXTENSION), None)


def apply_provider_status(communication: dict[str, Any], status: str | None, error_code: str | None = None) -> bool:
    """Record the provider's delivery status unless it would move backwards or past a terminal one.

    Returns whether anything changed. A failure after sending makes the Communication not-done.
    """
    if status not in PROVIDER_STATUS_RANK:
        return False
    extensions = communication.setdefault("extension", [])
    current = next((extension for extension in extensions if extension.get("url") == PROVIDER_STATUS_EXTENSION),
                   None)
    if current is not None:
        previous = current["valueCode"]
        if previous in PROVIDER_FAILURES or PROVIDER_STATUS_RANK[status] <= PROVIDER_STATUS_RANK.get(previous, -1):
            return False
        current["valueCode"] = status
    else:
        extensions.append({"url": PROVIDER_STATUS_EXTENSION, "valueCode": status})
    if status in PROVIDER_FAILURES:
        _not_done(communication, "undelivered", f"Twilio reported {status}"
                                                + (f" (error {error_code})" if error_code else ""))
    return True
