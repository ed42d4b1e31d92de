"""Dead letters as FHIR: background work that gives up leaves a `failed` Task that staff can search.

The Task names the job's kind in `code` (urn:fhir-server:CodeSystem/background-job, one code per outbox
topic), the resource the work was for in `focus`, the error in `statusReason.text` and as an output, and
the outbox row in an identifier. It is labelled NOPAT: errors may quote clinical data, and patient/ scopes
never see it. `Task?code=urn:fhir-server:CodeSystem/background-job|&status=failed` lists every dead letter.
Notifications also end their CommunicationRequest and Communication (messaging/delivery.py); a merge fails
its own Task (operations/patient_merge_job.py).
"""

from datetime import datetime, timezone

from psycopg import AsyncConnection

from fhir_server.auth.enforce import HIDDEN_FROM_PATIENTS
from fhir_server.messaging.store import store
from fhir_server.storage.repository import instant
from fhir_server.worker import outbox

BACKGROUND_JOB = "urn:fhir-server:CodeSystem/background-job"
JOB_IDENTIFIER = "urn:fhir-server:outbox-job"
"""Task.identifier of a dead letter: the outbox row's id."""


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1000]


async def record(conn: AsyncConnection, row: outbox.Row, error: str, settled_as: str | None = None) -> str:
    """Dead-letter `row` (its `last_error` becomes `settled_as`, else `error`) and record the failed Task; returns
    its id. Run it in a transaction of its own, so that what failed rolled back first."""
    await outbox.settle(conn, row.id, "dead", error=settled_as or error, count_attempt=row.state != "sending")
    now = instant(datetime.now(timezone.utc))
    system, code = HIDDEN_FROM_PATIENTS
    task = {
        "resourceType": "Task", "status": "failed", "intent": "order",
        "meta": {"security": [{"system": system, "code": code}]},
        "identifier": [{"system": JOB_IDENTIFIER, "value": str(row.id)}],
        "code": {"coding": [{"system": BACKGROUND_JOB, "code": row.topic}]},
        "statusReason": {"text": error},
        "authoredOn": now, "lastModified": now,
        "output": [{"type": {"text": "error"}, "valueString": error}],
    }
    if row.fhir_id:
        task["focus"] = {"reference": f"{row.resource_type}/{row.fhir_id}"}
    return (await store(conn, task)).fhir_id
