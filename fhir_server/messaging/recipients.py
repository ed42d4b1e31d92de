"""A recipient's address for a channel, from its telecom: phone numbers as E.164, e-mail addresses checked."""

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import phonenumbers
from dateutil.parser import isoparse
from psycopg import AsyncConnection

from fhir_server.storage import repository

RECIPIENT_TYPES = ("Patient", "RelatedPerson", "Practitioner")
TELECOM_SYSTEMS = {"sms": ("sms", "phone"), "whatsapp": ("sms", "phone"), "email": ("email",)}
# Deliberately plain: one @, no spaces, a dot in the domain. The SMTP server has the final word.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(slots=True)
class Address:
    value: str | None
    problem: tuple[str, str] | None = None
    """(status reason code, explanation) when there is no usable address."""


def _current(telecom: dict[str, Any]) -> bool:
    end = (telecom.get("period") or {}).get("end")
    if not end:
        return True
    moment = isoparse(end)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)) > datetime.now(timezone.utc)


def e164(number: str, region: str) -> str | None:
    """`number` in E.164, or None if it is not a valid phone number."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def address_of(resource: dict[str, Any], channel: str, region: str) -> Address:
    """The preferred current telecom for `channel`: mobile before others, then by rank."""
    systems = TELECOM_SYSTEMS[channel]
    candidates = [telecom for telecom in resource.get("telecom") or []
                  if isinstance(telecom, dict) and telecom.get("system") in systems and telecom.get("value")
                  and telecom.get("use") != "old" and _current(telecom)]
    if not candidates:
        return Address(None, ("no-address", f"{resource['resourceType']}/{resource.get('id')} has no current "
                                            f"{' or '.join(systems)} telecom"))
    candidates.sort(key=lambda telecom: (telecom.get("use") != "mobile", telecom.get("rank") or 1_000_000))
    value = str(candidates[0]["value"]).strip()
    if channel == "email":
        if value.lower().startswith("mailto:"):
            value = value[len("mailto:"):]
        if EMAIL.match(value):
            return Address(value)
        return Address(None, ("invalid-address", "The e-mail address is not valid"))
    number = e164(value, region)
    if number is None:
        return Address(None, ("invalid-address", "The phone number is not a valid number"))
    return Address(number)


async def resolve(conn: AsyncConnection, reference: str, channel: str, region: str) -> Address:
    resource_type, _, fhir_id = reference.partition("/")
    if not reference:
        return Address(None, ("unsupported-recipient", "The CommunicationRequest has no recipient"))
    if resource_type not in RECIPIENT_TYPES or not fhir_id or "/" in fhir_id:
        return Address(None, ("unsupported-recipient", f"Recipient {reference} is not a local Patient, "
                                                       "RelatedPerson or Practitioner"))
    stored = await repository.read(conn, resource_type, fhir_id)
    if stored is None or stored.deleted:
        return Address(None, ("unsupported-recipient", f"Recipient {reference} does not exist"))
    return address_of(stored.json(), channel, region)
