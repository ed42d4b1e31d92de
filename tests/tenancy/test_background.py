"""Background work in the right tenant: the relay serves every tenant's outbox, and each job runs in the schema
of the tenant whose row it is (outbox ids repeat across tenants), in-process or in `fhir-server worker`."""

from datetime import datetime, timedelta, timezone

import psycopg
from twilio.request_validator import RequestValidator

from fhir_server.workflow.codes import OVERDUE, TASK_FLAG
from tests.messaging.helpers import communication_request, eventually, patient, read, resources
from tests.tenancy.conftest import TENANTS
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN
from tests.workflow.helpers import task


def _due(seconds: float) -> dict:
    end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return {"period": {"end": end.isoformat(timespec="milliseconds")}}


def _overdue(resource: dict) -> bool:
    return any(tag == {"system": TASK_FLAG, "code": OVERDUE} for tag in resource.get("meta", {}).get("tag", []))


def _states(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT id, state FROM outbox ORDER BY id").fetchall()


async def test_each_tenants_work_runs_in_that_tenant(tenant_db, background_app) -> None:
    async with background_app(FHIR_TENANCY="url") as (_, client):
        # The same Task id in both tenants, each with outbox row 1; only beta's is due soon.
        soon = await client.put("/fhir/beta/Task/t1", json=task("requested", id="t1", restriction=_due(0.3)))
        later = await client.put("/fhir/alpha/Task/t1", json=task("requested", id="t1", restriction=_due(3600)))
        assert soon.status_code == 201 and later.status_code == 201
        assert _states(tenant_db["alpha"])[0][0] == _states(tenant_db["beta"])[0][0] == 1

        await eventually(lambda: _states(tenant_db["beta"]) == [(1, "done")])
        assert _overdue((await client.get("/fhir/beta/Task/t1")).json())
        assert not _overdue((await client.get("/fhir/alpha/Task/t1")).json())
        assert _states(tenant_db["alpha"]) == [(1, "pending")]


async def test_a_redis_worker_serves_every_tenant(tenant_db, configured_client, worker_process) -> None:
    """`fhir-server worker` with FHIR_TENANCY=url relays both tenants' outboxes through Redis."""
    worker = worker_process(FHIR_TENANCY="url")
    async with configured_client(FHIR_TENANCY="url") as client:
        for name in TENANTS:
            created = await client.put(f"/{name}/Task/t2", json=task("requested", id="t2", restriction=_due(0.3)))
            assert created.status_code == 201, created.text

        def done() -> bool:
            """both tenants' overdue work done by the worker"""
            return all(_states(tenant_db[name]) == [(1, "done")] for name in TENANTS)

        await eventually(done, 30)
        for name in TENANTS:
            assert _overdue((await client.get(f"/{name}/Task/t2")).json())
    assert worker.poll() is None


async def test_notifications_and_their_twilio_callbacks_stay_in_their_tenant(tenant_db, background_app,
                                                                              twilio) -> None:
    """A CommunicationRequest in beta is sent by the worker in beta, Twilio is told to call back below beta's
    base, and the signed callback there updates beta's Communication."""
    callback = "http://test/fhir/{tenant}/twilio/status"
    async with background_app(FHIR_TENANCY="url", FHIR_TWILIO_STATUS_CALLBACK_URL=callback) as (_, client):
        # The same patient id in both tenants; only beta asks for a message.
        for name in TENANTS:
            assert (await client.put(f"/fhir/{name}/Patient/p1", json={**patient(), "id": "p1"})).status_code == 201
        created = await client.post("/fhir/beta/CommunicationRequest", json=communication_request("Patient/p1"))
        assert created.status_code == 201

        def sent() -> list:
            """beta's Communication completed"""
            return [c for c in resources(tenant_db["beta"], "Communication") if c["status"] == "completed"]

        [communication] = await eventually(sent)
        [message] = twilio.messages
        assert message["StatusCallback"] == f"http://test/fhir/beta/twilio/status?communication={communication['id']}"
        path = message["StatusCallback"].removeprefix("http://test")
        params = {"AccountSid": ACCOUNT_SID, "MessageSid": "SMx", "MessageStatus": "undelivered", "ErrorCode": "30003"}
        signature = RequestValidator(AUTH_TOKEN).compute_signature(message["StatusCallback"], params)
        answered = await client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        assert answered.status_code == 204
        assert read(tenant_db["beta"], "Communication", communication["id"])["status"] == "not-done"
    assert resources(tenant_db["alpha"], "Communication") == []
