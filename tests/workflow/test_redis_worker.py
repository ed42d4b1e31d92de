"""Workflow jobs under `fhir-server worker` over real Redis: a due recurrence, redelivered, makes one Task."""

import asyncio
from datetime import datetime, timedelta, timezone

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from fhir_server.worker.runtime import QUEUE
from tests.messaging.helpers import eventually, resources
from tests.workflow.test_recurrence import _template


async def test_recurrence_under_the_redis_worker_survives_redelivery(background_app, worker_process, redis_url,
                                                                     db) -> None:
    worker = worker_process()
    async with background_app(FHIR_BACKGROUND="off", FHIR_REDIS_URL=redis_url) as (_, client):
        start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        created = await client.post("/fhir/Task", json=_template("RRULE:FREQ=DAILY;COUNT=2", start))
        assert created.status_code == 201
        await eventually(lambda: len(resources(db, "Task")) == 2, seconds=20)
    [(outbox_id,)] = db.execute("SELECT id FROM outbox WHERE topic = 'task-recurrence' AND state = 'done'").fetchall()
    broker = RedisBroker(url=redis_url)
    broker.declare_queue(QUEUE)
    for _ in range(3):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="task-recurrence", args=(outbox_id,),
                                        kwargs={}, options={}))
    await eventually(lambda: redis.Redis.from_url(redis_url).llen(f"dramatiq:{QUEUE}") == 0)
    await asyncio.sleep(0.5)
    assert len(resources(db, "Task")) == 2  # the template and its first occurrence; the second is tomorrow
    assert db.execute("SELECT state FROM outbox WHERE topic = 'task-recurrence' ORDER BY id").fetchall() == [
        ("done",), ("pending",)]
    worker.terminate()
    assert worker.wait(15) == 0
