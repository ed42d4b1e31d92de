"""Never silent: background work that gives up is a failed Task staff can search, whatever the job's kind."""

from fhir_server.messaging.templates import TEMPLATE_USE
from fhir_server.worker.dead_letter import BACKGROUND_JOB, JOB_IDENTIFIER
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources
from tests.messaging.test_templates import template
from tests.messaging.test_threads import message


async def _failed_tasks(client, **params: str) -> list[dict]:
    response = await client.get("/fhir/Task", params={"code": f"{BACKGROUND_JOB}|", "status": "failed", **params})
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


async def test_a_failing_job_is_a_failed_task(background_app, db) -> None:
    """An auto-reply whose template needs a variable no thread can give fails: the job is dead-lettered and
    a failed Task, focused on the thread, says why."""
    async with background_app() as (_, client):
        canned = template(category="billing")  # its text is "Visit {date}"
        canned["meta"]["tag"].append({"system": TEMPLATE_USE, "code": "auto-reply"})
        assert (await client.post("/fhir/Basic", json=canned)).status_code == 201
        pid = (await client.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
        thread = (await client.post("/fhir/Communication", json=message(
            f"Patient/{pid}", "Organization/clinic", "Why this invoice?", "billing"))).json()["id"]
        await eventually(lambda: db.execute("SELECT state FROM outbox").fetchall() == [("dead",)])
        [task] = await _failed_tasks(client, focus=f"Communication/{thread}")
        assert await _failed_tasks(client) == [task]
    assert task["code"]["coding"] == [{"system": BACKGROUND_JOB, "code": "auto-reply"}]
    assert "needs a value for '{date}'" in task["statusReason"]["text"]
    assert task["output"][0]["valueString"] == task["statusReason"]["text"]
    assert task["meta"]["security"] == [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}]
    [(outbox_id, error)] = db.execute("SELECT id, last_error FROM outbox").fetchall()
    assert task["identifier"] == [{"system": JOB_IDENTIFIER, "value": str(outbox_id)}]
    assert "needs a value" in error
    assert [c["id"] for c in resources(db, "Communication")] == [thread]  # no reply was sent


async def test_a_notification_that_breaks_inside_the_server_is_not_silent(background_app, twilio, db) -> None:
    """A recipient whose stored data the worker cannot read (here: corrupted in the database) fails the
    notification: a failed Task holds the error, and the request goes on hold with reason internal-error."""
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        db.execute("UPDATE resource SET content = convert_to('[]', 'UTF8') WHERE fhir_id = %s", (pid,))
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
        [task] = await _failed_tasks(client, focus=f"CommunicationRequest/{rid}")
    assert request["status"] == "on-hold" and reason(request) == "internal-error"
    assert task["code"]["coding"][0]["code"] == "notification" and "AttributeError" in task["statusReason"]["text"]
    assert db.execute("SELECT state, last_error FROM outbox").fetchall() == [("dead", "internal-error")]
    assert twilio.requests == 0
