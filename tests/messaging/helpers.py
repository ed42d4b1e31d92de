"""Building notification requests and waiting (boundedly) for the background work to show."""

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import psycopg

from fhir_server.messaging.codes import MEDIUM, PARTICIPATION_MODE

T = TypeVar("T")
MEDIA = {"sms": (PARTICIPATION_MODE, "SMSWRIT"), "email": (PARTICIPATION_MODE, "EMAILWRIT"),
         "whatsapp": (MEDIUM, "whatsapp")}


def patient(phone: str | None = "+1 (415) 555-0132", email: str | None = "pat@example.org") -> dict[str, Any]:
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone, "use": "mobile"})
    if email:
        telecom.append({"system": "email", "value": email})
    return {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Pat"]}], "telecom": telecom}


def communication_request(recipient: str, channel: str = "sms", text: str = "Your appointment is tomorrow at 9:00",
                          **extra: Any) -> dict[str, Any]:
    system, code = MEDIA[channel]
    return {"resourceType": "CommunicationRequest", "status": "active",
            "recipient": [{"reference": recipient}], "medium": [{"coding": [{"system": system, "code": code}]}],
            "payload": [{"contentString": text}], **extra}


async def eventually(check: Callable[[], T], seconds: float = 10) -> T:
    """`check()` once it is truthy, polling while the event loop (and the in-process workers) run."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {check.__doc__ or check}")
        await asyncio.sleep(0.05)


def resources(db: psycopg.Connection, resource_type: str) -> list[dict[str, Any]]:
    rows = db.execute("SELECT content FROM resource WHERE resource_type = %s AND NOT deleted ORDER BY id",
                      (resource_type,)).fetchall()
    return [orjson.loads(row[0]) for row in rows]


def raw(db: psycopg.Connection, resource_type: str, fhir_id: str) -> bytes:
    """The current version's JSON as stored."""
    row = db.execute("SELECT content FROM resource WHERE resource_type = %s AND fhir_id = %s",
                     (resource_type, fhir_id)).fetchone()
    return bytes(row[0])


def read(db: psycopg.Connection, resource_type: str, fhir_id: str) -> dict[str, Any]:
    return orjson.loads(raw(db, resource_type, fhir_id))


def reason(resource: dict[str, Any]) -> str | None:
    codings = (resource.get("statusReason") or {}).get("coding") or [{}]
    return codings[0].get("code")
