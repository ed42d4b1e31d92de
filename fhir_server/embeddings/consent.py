"""Consent to AI processing: a patient's active Consent that denies it keeps their data out of embeddings.

The code: a provision (or nested provision) with `type` = `deny` and, in `purpose` (Coding) or `action`
(CodeableConcept), the coding `http://fhir-server.dev/CodeSystem/consent-purpose|ai-processing`. Such a
Consent, written or updated, records the denial and removes the patient's chunks in its own transaction;
withdrawing it (another status, no such provision, or delete) schedules their resources to be embedded again.
"""

from typing import Any

from psycopg import AsyncConnection

AI_PROCESSING = ("http://fhir-server.dev/CodeSystem/consent-purpose", "ai-processing")


def _codings(provision: dict[str, Any]) -> list[Any]:
    actions = [coding for action in provision.get("action") or () if isinstance(action, dict)
               for coding in action.get("coding") or ()]
    return [*(provision.get("purpose") or ()), *actions]


def _denies(provision: Any) -> bool:
    if not isinstance(provision, dict):
        return False
    if provision.get("type") == "deny" and any(
            isinstance(coding, dict) and (coding.get("system"), coding.get("code")) == AI_PROCESSING
            for coding in _codings(provision)):
        return True
    return any(_denies(nested) for nested in provision.get("provision") or ())


def denied_patient(consent: dict[str, Any] | None) -> str | None:
    """The id of the Patient whose AI processing `consent` denies, if it is active and does."""
    if not consent or consent.get("status") != "active" or not _denies(consent.get("provision")):
        return None
    reference = (consent.get("patient") or {}).get("reference")
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        return None
    return reference.removeprefix("Patient/")


async def consent_written(conn: AsyncConnection, fhir_id: str, resource: dict[str, Any] | None,
                          previous: dict[str, Any] | None) -> None:
    from fhir_server.embeddings.index import schedule_patient

    patient = denied_patient(resource)
    # First what this Consent no longer denies (withdrawn, or now about another patient), then what it does.
    withdrawn = await (await conn.execute(
        "DELETE FROM embedding_consent WHERE consent_id = %s AND patient IS DISTINCT FROM %s RETURNING patient",
        (fhir_id, patient))).fetchone()
    if patient is not None:
        await conn.execute("INSERT INTO embedding_consent (consent_id, patient) VALUES (%s, %s) "
                           "ON CONFLICT (consent_id) DO NOTHING", (fhir_id, patient))
        await conn.execute("DELETE FROM embedding_chunk WHERE patients @> ARRAY[%s]", (patient,))
    if withdrawn is not None:
        await schedule_patient(conn, withdrawn[0])
