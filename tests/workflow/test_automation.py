"""Automated Tasks: the worker carries out send-message and send-appointment-reminder Tasks when due."""

from datetime import datetime, timedelta, timezone

from fhir_server.workflow.codes import AUTOMATION
from tests.messaging.helpers import eventually, patient, read, resources
from tests.workflow.helpers import task


def _automated(code: str, inputs: dict, **extra) -> dict:
    items = []
    for name, value in inputs.items():
        kind = "valueReference" if isinstance(value, dict) else "valueString"
        items.append({"type": {"coding": [{"code": name}]}, kind: value})
    return task("requested", code={"coding": [{"system": AUTOMATION, "code": code}]}, input=items, **extra)


async def test_send_message_task_runs_when_due(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        start = datetime.now(timezone.utc) + timedelta(seconds=1)
        created = await client.post("/fhir/Task", json=_automated(
            "send-message", {"message": "Please book your flu shot", "medium": "sms"},
            **{"for": {"reference": f"Patient/{pid}"}, "restriction": {"period": {"start": start.isoformat()}}}))
        assert created.status_code == 201, created.text
        tid = created.json()["id"]
        assert read(db, "Task", tid)["status"] == "requested"
        done = await eventually(lambda: (t := read(db, "Task", tid))["status"] == "completed" and t)
        await eventually(lambda: twilio.messages)
    assert datetime.fromisoformat(done["executionPeriod"]["start"]) >= start
    [output] = done["output"]
    request_id = output["valueReference"]["reference"].split("/")[1]
    request = read(db, "CommunicationRequest", request_id)
    assert request["basedOn"] == [{"reference": f"Task/{tid}"}]
    assert twilio.messages[0]["Body"] == "Please book your flu shot"


async def test_appointment_reminder_and_a_failure(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        appointment = (await client.post("/fhir/Appointment", json={
            "resourceType": "Appointment", "status": "booked", "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T09:30:00Z", "participant": [{"actor": {"reference": f"Patient/{pid}"},
                                                            "status": "accepted"}]})).json()
        reminder = (await client.post("/fhir/Task", json=_automated(
            "send-appointment-reminder", {"appointment": {"reference": f"Appointment/{appointment['id']}"}},
            **{"for": {"reference": f"Patient/{pid}"}}))).json()
        broken = (await client.post("/fhir/Task", json=_automated("send-message", {"message": "Hi"}))).json()
        await eventually(lambda: twilio.messages)
        failed = await eventually(lambda: (t := read(db, "Task", broken["id"]))["status"] == "failed" and t)
    assert "2026-12-01T09:00:00Z" in twilio.messages[0]["Body"]
    assert read(db, "Task", reminder["id"])["status"] == "completed"
    assert "No recipient" in failed["statusReason"]["text"]
    assert len(resources(db, "CommunicationRequest")) == 1


async def test_an_automated_task_waits_for_its_dependencies(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        first = (await client.post("/fhir/Task", json=task("in-progress"))).json()
        automated = (await client.post("/fhir/Task", json=_automated(
            "send-message", {"message": "Your results are in"}, basedOn=[{"reference": f"Task/{first['id']}"}],
            **{"for": {"reference": f"Patient/{pid}"}}))).json()
        waiting = await eventually(lambda: (t := read(db, "Task", automated["id"])).get("businessStatus") and t)
        assert waiting["status"] == "requested" and f"Task/{first['id']}" in waiting["businessStatus"]["text"]
        assert twilio.messages == []
        assert (await client.put(f"/fhir/Task/{first['id']}", json={**first, "status": "completed"})).status_code == 200
        done = await eventually(lambda: (t := read(db, "Task", automated["id"]))["status"] == "completed" and t)
        await eventually(lambda: twilio.messages)
    assert "businessStatus" not in done and twilio.messages[0]["Body"] == "Your results are in"
