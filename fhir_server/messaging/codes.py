"""The code systems, extensions and identifier systems of notifications (ours are defined under terminology/)."""

from typing import Any

PARTICIPATION_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
MEDIUM = "urn:fhir-server:CodeSystem/communication-medium"
STATUS_REASON = "urn:fhir-server:CodeSystem/notification-status-reason"
CONSENT_CATEGORY = "urn:fhir-server:CodeSystem/consent-category"

# The medium codings each channel answers to, and the coding a Communication of that channel carries.
CHANNEL_MEDIA: dict[str, tuple[str, str, str]] = {
    "sms": (PARTICIPATION_MODE, "SMSWRIT", "SMS writing"),
    "email": (PARTICIPATION_MODE, "EMAILWRIT", "email"),
    "whatsapp": (MEDIUM, "whatsapp", "WhatsApp"),
}

DELIVERY_EXTENSION = "urn:fhir-server:StructureDefinition/notification-delivery"
"""On a CommunicationRequest: `attempts` (valueInteger) and `nextAttempt` (valueDateTime) while retrying."""
PROVIDER_STATUS_EXTENSION = "urn:fhir-server:StructureDefinition/provider-delivery-status"
"""On a Communication: the provider's latest delivery status (Twilio's MessageStatus), valueCode."""
ATTEMPT_IDENTIFIER = "urn:fhir-server:notification-attempt"
"""Communication.identifier of an attempt: `<outbox id>-<attempt number>`."""
PROVIDER_IDENTIFIERS = {"sms": "urn:fhir-server:twilio-message-sid", "whatsapp": "urn:fhir-server:twilio-message-sid",
                        "email": "urn:fhir-server:smtp-message-id"}
SES_MESSAGE_ID = "urn:fhir-server:ses-message-id"
"""Communication.identifier of an e-mail sent through Amazon SES: the MessageId SES answered with."""
KEYWORD_CONSENT_IDENTIFIER = "urn:fhir-server:keyword-consent"
"""Consent.identifier of the opt-out/opt-in that SMS keywords record: `<recipient reference>|<channel>`."""


def channel_of(medium: list[Any] | None) -> str | None:
    """The first channel among a CommunicationRequest's media (their order is the requester's preference)."""
    for concept in medium or []:
        for coding in (concept.get("coding") or []) if isinstance(concept, dict) else []:
            for channel, (system, code, _) in CHANNEL_MEDIA.items():
                if coding.get("system") == system and coding.get("code") == code:
                    return channel
    return None


def medium_concept(channel: str) -> dict[str, Any]:
    system, code, display = CHANNEL_MEDIA[channel]
    return {"coding": [{"system": system, "code": code, "display": display}]}


STATUS_REASONS = frozenset({
    "channel-not-configured", "no-address", "invalid-address", "no-content", "opted-out", "unsupported-recipient",
    "provider-rejected", "provider-error", "max-attempts-exceeded", "delivery-outcome-unknown", "undelivered",
    "internal-error",
})


def status_reason(code: str, text: str | None = None) -> dict[str, Any]:
    if code not in STATUS_REASONS:
        raise ValueError(f"{code!r} is not in {STATUS_REASON}")
    concept: dict[str, Any] = {"coding": [{"system": STATUS_REASON, "code": code}]}
    if text:
        concept["text"] = text
    return concept
