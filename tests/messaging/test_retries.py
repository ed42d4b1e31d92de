"""Retries with backoff, the dead letter, scheduled sends, revocation and redelivered messages."""

import asyncio
from datetime import datetime, timedelta, timezone

from fhir_server.messaging.codes import DELIVERY_EXTENSION
from fhir_server.storage.repository import instant
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources


def _statuses(db) -> list[str]:
    return [c["status"] for c in resources(db, "Communication")]


async def test_provider_errors_are_retried_until_sent(background_app, twilio, db) -> None:
    twilio.failures = [500, 503]
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        # While retrying, the request stays active and shows the attempt count and next attempt time.
        retrying = await eventually(lambda: (r := read(db, "CommunicationRequest", rid)).get("extension") and r)
        assert retrying["status"] == "active"
        [delivery] = [e for e in retrying["extension"] if e["url"] == DELIVERY_EXTENSION]
        assert delivery["extension"][0] == {"url": "attempts", "valueInteger": 1}
        assert delivery["extension"][1]["url"] == "nextAttempt"
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
    assert twilio.requests == 3 and len(twilio.messages) == 1
    assert _statuses(db) == ["not-done", "not-done", "completed"]
    assert [reason(c) for c in resources(db, "Communication")][:2] == ["provider-error", "provider-error"]
    history = db.execute("SELECT count(*) FROM resource_version v JOIN resource r ON r.id = v.resource_id "
                         "WHERE r.fhir_id = %s", (rid,)).fetchone()[0]
    assert history >= 3  # created, retrying (twice), completed: each step a version


async def test_dead_letter_after_max_attempts(background_app, twilio, db) -> None:
    twilio.failures = [500] * 10
    async with background_app(FHIR_RETRY_MAX_ATTEMPTS='{"sms": 3}') as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and reason(request) == "max-attempts-exceeded"
    assert twilio.requests == 3
    assert _statuses(db) == ["not-done"] * 3
    assert db.execute("SELECT state, attempts, last_error FROM outbox").fetchall() == [
        ("dead", 3, "max-attempts-exceeded")]


async def test_reactivating_a_dead_letter_sends_again(background_app, twilio, db) -> None:
    twilio.failures = [400]
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] == "on-hold" and r)
        assert reason(request) == "provider-rejected" and twilio.requests == 1  # a 4xx is not retried
        request["status"] = "active"
        request.pop("statusReason")
        assert (await client.put(f"/fhir/CommunicationRequest/{rid}", json=request)).status_code == 200
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
    assert len(twilio.messages) == 1 and _statuses(db) == ["not-done", "completed"]


async def test_scheduled_send_waits_for_its_time_also_across_restarts(background_app, twilio, db) -> None:
    due = datetime.now(timezone.utc) + timedelta(seconds=4)
    async with background_app(FHIR_BACKGROUND="off") as (_, client):  # a server without workers records it
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest", json=communication_request(
            f"Patient/{pid}", occurrenceDateTime=instant(due)))).json()["id"]
    async with background_app():  # ... and a later one with workers sends it when due
        # Nothing before the due time (however late a loaded machine started this second server).
        while (left := (due - datetime.now(timezone.utc)).total_seconds()) > 0.5:
            assert twilio.requests == 0
            await asyncio.sleep(min(left - 0.5, 0.5))
        await eventually(lambda: twilio.messages, seconds=8)
        assert datetime.now(timezone.utc) >= due
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")


async def test_revoking_cancels_pending_work(background_app, twilio, db) -> None:
    later = instant(datetime.now(timezone.utc) + timedelta(seconds=2))
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        created = (await client.post("/fhir/CommunicationRequest", json=communication_request(
            f"Patient/{pid}", occurrenceDateTime=later))).json()
        created["status"] = "revoked"
        assert (await client.put(f"/fhir/CommunicationRequest/{created['id']}", json=created)).status_code == 200
        assert db.execute("SELECT state FROM outbox").fetchall() == [("cancelled",)]
        await asyncio.sleep(2.5)
    assert twilio.requests == 0 and resources(db, "Communication") == []
    assert read(db, "CommunicationRequest", created["id"])["status"] == "revoked"


async def test_redelivered_messages_send_nothing_twice(background_app, twilio, db) -> None:
    async with background_app() as (app, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        [(outbox_id,)] = db.execute("SELECT id FROM outbox").fetchall()
        actor = app.background.broker.get_actor("notification")
        for _ in range(3):  # duplicates racing the relay's own message
            actor.send(outbox_id)
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
        for _ in range(3):  # and late redeliveries after it was done
            actor.send(outbox_id)
        # In a thread: the actors need this event loop to finish.
        await asyncio.to_thread(app.background.broker.join, "fhir", timeout=10_000)
    assert len(twilio.messages) == 1 and _statuses(db) == ["completed"]


async def test_priority_order_of_due_work(background_app, db) -> None:
    from fhir_server.worker import outbox

    async with background_app(FHIR_BACKGROUND="off") as (app, client):
        for priority in ("routine", "stat", "urgent", "asap"):
            await client.post("/fhir/CommunicationRequest",
                              json=communication_request("Patient/x", priority=priority, note=[{"text": priority}]))
        async with app.pool.connection() as conn, conn.transaction():
            claimed = await outbox.claim(conn, 10, 60)
    priorities = dict(db.execute("SELECT o.id, convert_from(r.content, 'UTF8')::jsonb->>'priority' FROM outbox o "
                                 "JOIN resource r ON r.fhir_id = o.fhir_id").fetchall())
    assert [priorities[row[0]] for row in claimed] == ["stat", "asap", "urgent", "routine"]
