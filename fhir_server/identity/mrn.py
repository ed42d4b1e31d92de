"""Medical record numbers: every stored Patient carries one identifier of the configured MRN system."""

import asyncio
from datetime import datetime, timezone
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.settings import get_settings
from fhir_server.storage import tenants

MRN_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                        "display": "Medical record number"}]}


def mrn_identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    system = get_settings().mrn_system
    return [identifier for identifier in resource.get("identifier") or []
            if isinstance(identifier, dict) and identifier.get("system") == system and identifier.get("value")]


# Numbers drawn from the sequence but not yet handed out, by this process, per tenant schema (each tenant
# has its own sequence). Drawing a block at a time keeps a Patient create to one round trip in the common
# case; numbers stay unique and are never reused (a process that stops only leaves a gap).
MRN_BLOCK = 50
_reserved: dict[str | None, list[int]] = {}
_reserving = asyncio.Lock()


async def new_mrn(conn: AsyncConnection) -> str:
    """A fresh MRN. The number comes from a sequence, so concurrent creates never share one and a number
    is never handed out again, even when the create that drew it rolls back."""
    tenant = tenants.current.get()
    async with _reserving:
        reserved = _reserved.setdefault(tenant.schema if tenant is not None else None, [])
        if not reserved:
            rows = await (await conn.execute("SELECT nextval('patient_mrn_seq') FROM generate_series(1, %s)",
                                             (MRN_BLOCK,))).fetchall()
            reserved.extend(sorted((row[0] for row in rows), reverse=True))
        number = reserved.pop()
    return get_settings().mrn_format.format(year=datetime.now(timezone.utc).year, number=number)


async def ensure_mrn(conn: AsyncConnection, patient: dict[str, Any], fhir_id: str | None) -> None:
    """Add an MRN to `patient` unless it has one: an update keeps the current version's, a create gets a new one.

    Clients that PUT their own view of a Patient (without our MRN) thereby cannot drop it by accident.
    """
    if mrn_identifiers(patient):
        return
    kept: list[dict[str, Any]] = []
    if fhir_id is not None:
        row = await (await conn.execute(
            "SELECT content FROM resource WHERE resource_type = 'Patient' AND fhir_id = %s AND NOT deleted",
            (fhir_id,))).fetchone()
        if row is not None:
            kept = mrn_identifiers(orjson.loads(row[0]))
    if not kept:
        kept = [{"use": "usual", "type": MRN_TYPE, "system": get_settings().mrn_system,
                 "value": await new_mrn(conn)}]
    patient["identifier"] = [*(patient.get("identifier") or []), *kept]
