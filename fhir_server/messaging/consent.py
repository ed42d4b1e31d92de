"""Opt-out and opt-in as Consent: a deny provision naming a channel's medium stops messages over it."""

from datetime import datetime, timezone
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.messaging.codes import (CHANNEL_MEDIA, CONSENT_CATEGORY, KEYWORD_CONSENT_IDENTIFIER,
                                         medium_concept)
from fhir_server.messaging.store import store
from fhir_server.storage.repository import instant

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP", "OPTIN"})


def _names_channel(provision: dict[str, Any], channel: str) -> bool:
    system, code, _ = CHANNEL_MEDIA[channel]
    return any(coding.get("system") == system and coding.get("code") == code
               for concept in provision.get("code") or [] if isinstance(concept, dict)
               for coding in concept.get("coding") or [] if isinstance(coding, dict))


async def opted_out(conn: AsyncConnection, recipient: str, channel: str) -> bool:
    """Whether an active Consent of the Patient `recipient` denies `channel` (other recipients: never)."""
    resource_type, _, fhir_id = recipient.partition("/")
    if resource_type != "Patient":
        return False
    rows = await (await conn.execute(
        "SELECT r.content FROM search_reference s JOIN resource r ON r.id = s.resource_id "
        "WHERE s.resource_type = 'Consent' AND s.param = 'patient' AND s.target_type = 'Patient' "
        "AND s.target_id = %s AND NOT r.deleted",
        (fhir_id,),
    )).fetchall()
    for (content,) in rows:
        consent = orjson.loads(content)
        provision = consent.get("provision") or {}
        if consent.get("status") == "active" and provision.get("type") == "deny" and _names_channel(provision, channel):
            return True
    return False


async def record_keyword(conn: AsyncConnection, patient_id: str, channel: str, opt_out: bool) -> str:
    """Record an SMS keyword as the Patient's one keyword Consent for `channel` (a new version each time)."""
    fhir_id = f"keyword-{channel}-{patient_id}"[:64]
    consent = {
        "resourceType": "Consent", "id": fhir_id, "status": "active",
        "identifier": [{"system": KEYWORD_CONSENT_IDENTIFIER, "value": f"{patient_id}|{channel}"}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": CONSENT_CATEGORY, "code": "communication-preference"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": instant(datetime.now(timezone.utc)),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTOUT" if opt_out else "OPTIN"}]},
        "provision": {"type": "deny" if opt_out else "permit", "code": [medium_concept(channel)]},
    }
    await store(conn, consent)
    return fhir_id
