"""Which resource writes have side effects: hooks by resource type, called by the repository in the write's
transaction so that the outbox rows they record commit or roll back with the resource."""

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from fhir_server.messaging.requests import communication_request_written

AfterWrite = Callable[[AsyncConnection, str, "dict[str, Any] | None", "dict[str, Any] | None"], Awaitable[None]]
"""(conn, fhir_id, resource as written or None when deleted, previous version or None when created)."""

AFTER_WRITE: dict[str, tuple[AfterWrite, ...]] = {
    "CommunicationRequest": (communication_request_written,),
}
