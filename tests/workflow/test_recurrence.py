"""Recurring Tasks: occurrences of a template's RRULE become Tasks, once each, also across restarts."""

import asyncio
from datetime import datetime, timedelta, timezone

from fhir_server.workflow.codes import OCCURRENCE_OF_EXTENSION, RECURRENCE_EXTENSION
from tests.messaging.helpers import eventually, resources
from tests.workflow.helpers import diagnostics, task


def _template(rule: str, start: datetime, **extra) -> dict:
    return task("requested", intent="plan", code={"text": "Check fridge temperature"},
                executionPeriod={"start": start.isoformat(timespec="seconds")},
                extension=[{"url": RECURRENCE_EXTENSION, "valueString": rule}],
                restriction={"period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"}}, **extra)


def _occurrences(db, template_id: str) -> list[dict]:
    return [resource for resource in resources(db, "Task") if any(
        extension.get("valueReference", {}).get("reference") == f"Task/{template_id}"
        for extension in resource.get("extension", []) if extension["url"] == OCCURRENCE_OF_EXTENSION)]


async def test_occurrences_are_made_on_schedule_once_each(background_app, db) -> None:
    async with background_app() as (_, client):
        start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
        created = await client.post("/fhir/Task", json=_template("RRULE:FREQ=SECONDLY;INTERVAL=1;COUNT=3", start))
        assert created.status_code == 201, created.text
        template_id = created.json()["id"]
        made = await eventually(lambda: len(_occurrences(db, template_id)) == 3 and _occurrences(db, template_id))
    made.sort(key=lambda occurrence: occurrence["restriction"]["period"]["start"])
    assert [occurrence["restriction"]["period"] for occurrence in made] == [
        {"start": (start + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
         "end": (start + timedelta(seconds=n, hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")} for n in range(3)]
    assert {occurrence["status"] for occurrence in made} == {"requested"}
    assert made[0]["code"] == {"text": "Check fridge temperature"} and made[0]["intent"] == "order"
    assert db.execute("SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM outbox "
                      "WHERE topic = 'task-recurrence'").fetchone() == (3, 3)


async def test_missed_occurrences_are_made_after_a_restart(background_app, db) -> None:
    async with background_app(FHIR_BACKGROUND="off") as (_, client):
        start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        created = await client.post("/fhir/Task", json=_template("RRULE:FREQ=SECONDLY;COUNT=2", start))
        template_id = created.json()["id"]
    await asyncio.sleep((start + timedelta(seconds=1.5) - datetime.now(timezone.utc)).total_seconds())
    assert _occurrences(db, template_id) == []
    async with background_app():
        await eventually(lambda: len(_occurrences(db, template_id)) == 2)


async def test_on_hold_stops_the_recurrence_and_a_bad_rule_is_422(background_app, db) -> None:
    start = datetime.now(timezone.utc) + timedelta(hours=1)
    async with background_app() as (_, client):
        created = (await client.post("/fhir/Task", json=_template("RRULE:FREQ=DAILY", start))).json()
        [(state, due)] = db.execute("SELECT state, due_at FROM outbox WHERE fhir_id = %s",
                                    (created["id"],)).fetchall()
        assert state == "pending" and abs((due - start).total_seconds()) < 1
        await client.put(f"/fhir/Task/{created['id']}", json={**created, "status": "on-hold"})
        states = db.execute("SELECT state FROM outbox WHERE fhir_id = %s", (created["id"],)).fetchall()
        assert states == [("cancelled",)]
        bad = await client.post("/fhir/Task", json=_template("RRULE:FREQ=SOMETIMES", start))
        assert bad.status_code == 422 and "RFC 5545" in diagnostics(bad)
