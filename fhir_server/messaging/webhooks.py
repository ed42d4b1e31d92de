"""Twilio's webhooks, outside the FHIR base: delivery status callbacks and inbound messages (with STOP/START).

Every request must carry a valid X-Twilio-Signature (HMAC of the URL and form fields with the auth token);
anything else gets 403.
"""

import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

import phonenumbers
from fastapi import APIRouter, Request
from fastapi.responses import Response
from psycopg import AsyncConnection
from twilio.request_validator import RequestValidator

from fhir_server.messaging import consent
from fhir_server.messaging.codes import PROVIDER_IDENTIFIERS, medium_concept
from fhir_server.messaging.delivery import apply_provider_status
from fhir_server.messaging.recipients import RECIPIENT_TYPES, e164
from fhir_server.messaging.store import store
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.storage.repository import instant

log = logging.getLogger(__name__)

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _signed_url(request: Request, settings: Settings) -> str:
    """The URL Twilio signed: its public base (behind a proxy) or the request's own."""
    if not settings.twilio_webhook_base_url:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return settings.twilio_webhook_base_url.rstrip("/") + request.url.path + query


async def _verified_form(request: Request, settings: Settings) -> dict[str, str] | None:
    """The form fields, or None unless the signature is valid."""
    params = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
    signature = request.headers.get("x-twilio-signature")
    if not settings.twilio_auth_token or not signature:
        return None
    if not RequestValidator(settings.twilio_auth_token).validate(_signed_url(request, settings), params, signature):
        return None
    return params


def _forbidden() -> Response:
    return Response(b"Invalid Twilio signature", 403, media_type="text/plain")


async def _communication_for(conn: AsyncConnection, communication_id: str | None, message_sid: str) -> str | None:
    """The Communication a callback is about: named in the callback URL, else found by the message SID."""
    if communication_id:
        return communication_id
    row = await (await conn.execute(
        "SELECT r.fhir_id FROM search_token t JOIN resource r ON r.id = t.resource_id "
        "WHERE t.resource_type = 'Communication' AND t.param = 'identifier' AND t.system = %s AND t.code = %s "
        "AND NOT r.deleted LIMIT 1",
        (PROVIDER_IDENTIFIERS["sms"], message_sid),
    )).fetchone()
    return row[0] if row else None


async def record_status(conn: AsyncConnection, communication_id: str | None, params: dict[str, str]) -> bool:
    """Apply a status callback to its Communication; False if it is unknown here."""
    fhir_id = await _communication_for(conn, communication_id, params.get("MessageSid", ""))
    stored = await repository.read(conn, "Communication", fhir_id, for_update=True) if fhir_id else None
    if stored is None or stored.deleted:
        return False
    communication = stored.json()
    if apply_provider_status(communication, params.get("MessageStatus"), params.get("ErrorCode")):
        await store(conn, communication)
    return True


async def _recipients_with_phone(conn: AsyncConnection, number: str, region: str) -> list[str]:
    """References of the Patients, RelatedPersons and Practitioners with a phone telecom equal to `number`
    (E.164) once normalised."""
    national = str(phonenumbers.parse(number).national_number)
    rows = await (await conn.execute(
        "SELECT DISTINCT r.resource_type, r.fhir_id, t.code FROM search_token t JOIN resource r ON r.id = t.resource_id "
        "WHERE t.resource_type = ANY(%s) AND t.param = 'telecom' AND t.system IN ('phone', 'sms') "
        "AND NOT r.deleted AND regexp_replace(t.code, '\\D', '', 'g') LIKE '%%' || %s",
        (list(RECIPIENT_TYPES), national),
    )).fetchall()
    return sorted({f"{resource_type}/{fhir_id}" for resource_type, fhir_id, value in rows
                   if e164(value, region) == number})


async def record_inbound(conn: AsyncConnection, params: dict[str, str], settings: Settings) -> dict[str, Any]:
    """An inbound message as a Communication from whoever has that phone; STOP/START as their Consent."""
    sender = params.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    number = e164(sender.removeprefix("whatsapp:"), settings.default_phone_region)
    senders = await _recipients_with_phone(conn, number, settings.default_phone_region) if number else []
    body = params.get("Body", "")
    keyword = body.strip().upper()
    if keyword in consent.OPT_OUT_KEYWORDS or keyword in consent.OPT_IN_KEYWORDS:
        # A number shared by several people (a family phone) opts all of them out, as Twilio does.
        for reference in senders:
            await consent.record_keyword(conn, reference, channel, keyword in consent.OPT_OUT_KEYWORDS)
    communication: dict[str, Any] = {
        "resourceType": "Communication", "status": "completed",
        "identifier": [{"system": PROVIDER_IDENTIFIERS[channel], "value": params.get("MessageSid", "")}],
        "medium": [medium_concept(channel)],
        "received": instant(datetime.now(timezone.utc)),
        "payload": [{"contentString": body}],
    }
    if len(senders) == 1:
        communication["sender"] = {"reference": senders[0]}
        if senders[0].startswith("Patient/"):
            communication["subject"] = communication["sender"]
    else:
        communication["note"] = [{"text": f"From {number or sender}: "
                                          + ("matches several people" if senders else "nobody has this number")}]
    return (await store(conn, communication)).json()


def twilio_routes(app: Any) -> APIRouter:
    """The routes, bound to the FHIRApplication `app` whose pool and settings they use."""
    router = APIRouter(prefix="/twilio")

    @router.post("/status")
    async def status_callback(request: Request) -> Response:
        params = await _verified_form(request, app.settings)
        if params is None:
            return _forbidden()
        async with app.pool.connection() as conn, conn.transaction():
            known = await record_status(conn, request.query_params.get("communication"), params)
        if not known:
            log.info("status callback for unknown message %s", params.get("MessageSid"))
        return Response(status_code=204)

    @router.post("/inbound")
    async def inbound(request: Request) -> Response:
        params = await _verified_form(request, app.settings)
        if params is None:
            return _forbidden()
        async with app.pool.connection() as conn, conn.transaction():
            await record_inbound(conn, params, app.settings)
        return Response(EMPTY_TWIML, 200, media_type="text/xml")

    return router
