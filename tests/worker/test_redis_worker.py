"""`fhir-server worker` over real Redis: delivery, redelivered and lost messages, a worker killed mid-send."""

import asyncio
import signal

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from fhir_server.worker.runtime import QUEUE, Runtime, make_broker, relay_once
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources


async def _request(client) -> str:
    pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
    response = await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}"))
    return response.json()["id"]


def _state(db) -> str:
    return db.execute("SELECT state FROM outbox").fetchone()[0]


async def test_worker_delivers_and_ignores_redelivery(background_app, worker_process, twilio, redis_url, db) -> None:
    worker = worker_process()
    async with background_app(FHIR_BACKGROUND="off", FHIR_REDIS_URL=redis_url) as (_, client):
        rid = await _request(client)
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed", seconds=20)
    [(outbox_id,)] = db.execute("SELECT id FROM outbox").fetchall()
    broker = RedisBroker(url=redis_url)
    broker.declare_queue(QUEUE)
    for _ in range(3):  # the same message delivered again, as after a lost acknowledgement
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="notification", args=(outbox_id,), kwargs={},
                                        options={}))
    await eventually(lambda: redis.Redis.from_url(redis_url).llen(f"dramatiq:{QUEUE}") == 0)
    await asyncio.sleep(0.5)
    assert len(twilio.messages) == 1 and len(resources(db, "Communication")) == 1
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


async def test_broker_down_delays_and_lost_message_is_relayed_again(background_app, worker_process, twilio,
                                                                    redis_url, db) -> None:
    async with background_app(FHIR_BACKGROUND="off", FHIR_OUTBOX_REDELIVER_SECONDS="1") as (app, client):
        rid = await _request(client)
        runtime = Runtime(app.settings, app.pool, asyncio.get_running_loop())
        down = make_broker(app.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}), runtime)
        try:
            await relay_once(runtime, down)
            raise AssertionError("the relay should have failed")
        except redis.ConnectionError:
            pass
        assert _state(db) == "pending"  # nothing was lost: the claim rolled back
        up = make_broker(app.settings.model_copy(update={"redis_url": redis_url}), runtime)
        assert await relay_once(runtime, up) == 1
        assert _state(db) == "queued"
    redis.Redis.from_url(redis_url).flushall()  # the broker loses the message
    worker_process(FHIR_OUTBOX_REDELIVER_SECONDS="1")
    await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed", seconds=20)
    assert len(twilio.messages) == 1


async def test_worker_killed_mid_send_never_sends_twice(background_app, worker_process, twilio, db) -> None:
    settings = {"FHIR_SEND_LEASE_SECONDS": "2", "FHIR_OUTBOX_REDELIVER_SECONDS": "1"}
    twilio.hang = True
    first = worker_process(**settings)
    async with background_app(FHIR_BACKGROUND="off") as (_, client):
        rid = await _request(client)
    await eventually(lambda: twilio.requests == 1, seconds=20)  # Twilio has the message; no answer yet
    first.kill()
    first.wait(10)
    twilio.release()
    worker_process(**settings)
    request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r,
                               seconds=20)
    assert request["status"] == "on-hold" and reason(request) == "delivery-outcome-unknown"
    [communication] = resources(db, "Communication")
    assert communication["status"] == "unknown" and reason(communication) == "delivery-outcome-unknown"
    assert twilio.requests == 1
