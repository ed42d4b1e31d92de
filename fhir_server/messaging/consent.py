"""Opt-out and opt-in as Consent: a deny provision naming a channel's medium stops messages over it.

Whose preference a Consent records: its `performer` (the consentor, searchable as `Consent?consentor=`), which
may be a Patient, a RelatedPerson or a Practitioner; for a Patient also its `patient`. R4 requires no
`patient` on a Consent, so a RelatedPerson's or Practitioner's own opt-out needs none.
"""

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
    """Whether an active Consent of `recipient` (its consentor, or for a Patient its patient) denies `channel`."""
    resource_type, _, fhir_id = recipient.partition("/")
    params = ["consentor", "patient"] if resource_type == "Patient" else ["consentor"]
    rows = await (await conn.execute(
        "SELECT DISTINCT r.id, r.content FROM search_reference s JOIN resource r ON r.id = s.resource_id "
        "WHERE s.resource_type = 'Consent' AND s.param = ANY(%s) AND s.target_type = %s "
        "AND s.target_id = %s AND NOT r.deleted",
        (params, resource_type, fhir_id),
    )).fetchall()
    for _, content in rows:
        consent = orjson.loads(content)
        provision = consent.get("provision") or {}
        if consent.get("status") == "active" and provision.get("type") == "deny" and _names_channel(provision, channel):
            return True
    return False


async def record_keyword(conn: AsyncConnection, recipient: str, channel: str, opt_out: bool) -> str:
    """Record an SMS keyword as the recipient's one keyword Consent for `channel` (a new version each time)."""
    resource_type, _, fhir_id = recipient.partition("/")
    consent_id = f"keyword-{channel}-{fhir_id}" if resource_type == "Patient" \
        else f"keyword-{channel}-{resource_type.lower()}-{fhir_id}"
    consent = {
        "resourceType": "Consent", "id": consent_id[:64], "status": "active",
        "identifier": [{"system": KEYWORD_CONSENT_IDENTIFIER, "value": f"{recipient}|{channel}"}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": CONSENT_CATEGORY, "code": "communication-preference"}]}],
        "performer": [{"reference": recipient}],
        "dateTime": instant(datetime.now(timezone.utc)),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTOUT" if opt_out else "OPTIN"}]},
        "provision": {"type": "deny" if opt_out else "permit", "code": [medium_concept(channel)]},
    }
    if resource_type == "Patient":
        consent["patient"] = {"reference": recipient}
    await store(conn, consent)
    return consent["id"]
