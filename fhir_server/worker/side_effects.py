"""Which resource writes have side effects: hooks by resource type, called by the repository in the write's
transaction so that the outbox rows they record commit or roll back with the resource."""

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from fhir_server.embeddings import sources
from fhir_server.embeddings.consent import consent_written
from fhir_server.messaging.requests import communication_request_written

AfterWrite = Callable[[AsyncConnection, str, "dict[str, Any] | None", "dict[str, Any] | None"], Awaitable[None]]
"""(conn, fhir_id, resource as written or None when deleted, previous version or None when created)."""


# Imported when first called: they use the repository, which imports this table.
async def _communication_written(conn: AsyncConnection, fhir_id: str, resource: "dict[str, Any] | None",
                                 previous: "dict[str, Any] | None") -> None:
    from fhir_server.messaging.threads import communication_written

    await communication_written(conn, fhir_id, resource, previous)


async def _task_written(conn: AsyncConnection, fhir_id: str, resource: "dict[str, Any] | None",
                        previous: "dict[str, Any] | None") -> None:
    from fhir_server.workflow import task_written

    await task_written(conn, fhir_id, resource, previous)


AFTER_WRITE: dict[str, tuple[AfterWrite, ...]] = {
    "CommunicationRequest": (communication_request_written,),
    "Communication": (_communication_written,),
    "Task": (_task_written,),
    "Consent": (consent_written,),
}


def hooks(resource_type: str, resource: "dict[str, Any] | None",
          previous: "dict[str, Any] | None") -> tuple[AfterWrite, ...]:
    """The hooks of a write: its type's, and embedding when the resource has or had text (any type has a
    narrative; a write of a resource without any runs no hook and keeps its single round trip)."""
    found = AFTER_WRITE.get(resource_type, ())
    if sources.wanted(resource, previous):
        found += (_embed,)
    return found


async def _embed(conn: AsyncConnection, fhir_id: str, resource: "dict[str, Any] | None",
                 previous: "dict[str, Any] | None") -> None:
    from fhir_server.embeddings.index import resource_written

    await resource_written(conn, (resource or previous or {})["resourceType"], fhir_id)
