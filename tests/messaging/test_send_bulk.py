"""CommunicationRequest/$send-bulk: a template to many recipients, checked first, queued in one transaction."""

import time

from fhir_server.operations.communication_request_send_bulk import BULK_IDENTIFIER
from tests.messaging.helpers import eventually, patient, resources
from tests.messaging.test_templates import template, variables


def _recipient(reference: str, **values: str) -> dict:
    return {"name": "recipient", "part": [{"name": "reference", "valueReference": {"reference": reference}},
                                          *variables(**values)]}


def _send(client, tid: str, *parameters: dict):
    return client.post("/CommunicationRequest/$send-bulk", json={"resourceType": "Parameters", "parameter": [
        {"name": "template", "valueReference": {"reference": f"Basic/{tid}"}}, *parameters]})


def test_a_thousand_recipients_queue_in_under_two_seconds(client, db) -> None:
    tid = client.post("/Basic", json=template()).json()["id"]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient()} for _ in range(1000)]}
    created = client.post("", json=bundle).json()
    ids = [entry["response"]["location"].split("Patient/")[1].split("/")[0] for entry in created["entry"]]
    started = time.monotonic()
    response = _send(client, tid, *[_recipient(f"Patient/{pid}", date=f"day {n}") for n, pid in enumerate(ids)])
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:2000]
    assert elapsed < 2, elapsed
    result = {p["name"]: p for p in response.json()["parameter"]}
    assert result["count"]["valueInteger"] == 1000
    group = result["groupIdentifier"]["valueIdentifier"]
    assert group["system"] == BULK_IDENTIFIER
    queued = db.execute("SELECT count(*) FROM outbox WHERE topic = 'notification' AND state = 'pending'").fetchone()
    assert queued == (1000,)
    found = client.get("/CommunicationRequest", params={"group-identifier": f"{BULK_IDENTIFIER}|{group['value']}",
                                                        "recipient": f"Patient/{ids[7]}"}).json()
    [entry] = found["entry"]
    assert entry["resource"]["payload"][0]["extension"][0]["extension"] == [{"url": "date", "valueString": "day 7"}]


def test_any_problem_queues_nothing(client, db) -> None:
    tid = client.post("/Basic", json=template()).json()["id"]
    pid = client.post("/Patient", json=patient()).json()["id"]
    response = _send(client, tid, _recipient(f"Patient/{pid}", date="x"), _recipient(f"Patient/{pid}"),
                     _recipient("Patient/nobody", date="y"), _recipient("Organization/o", date="z"))
    assert response.status_code == 422
    text = response.text
    assert f"needs a value for '{{date}}' (for Patient/{pid})" in text and "Organization/o is not" in text
    unknown = _send(client, tid, _recipient("Patient/nobody", date="y"))
    assert unknown.status_code == 422 and "Patient/nobody does not exist" in unknown.text
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM resource WHERE resource_type = 'CommunicationRequest'").fetchone() == (0,)


async def test_group_members_with_common_variables_are_sent(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        tid = (await client.post("/fhir/Basic", json=template())).json()["id"]
        first = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        second = (await client.post("/fhir/Patient", json=patient(phone="+1 415 555 0199"))).json()["id"]
        group = (await client.post("/fhir/Group", json={
            "resourceType": "Group", "type": "person", "actual": True,
            "member": [{"entity": {"reference": f"Patient/{first}"}}, {"entity": {"reference": f"Patient/{second}"}}],
        })).json()["id"]
        response = await client.post("/fhir/CommunicationRequest/$send-bulk", json={
            "resourceType": "Parameters", "parameter": [
                {"name": "template", "valueReference": {"reference": f"Basic/{tid}"}},
                {"name": "group", "valueReference": {"reference": f"Group/{group}"}}, *variables(date="Monday")]})
        assert response.status_code == 200, response.text
        await eventually(lambda: len(twilio.messages) == 2)
        await eventually(lambda: all(r["status"] == "completed" for r in resources(db, "CommunicationRequest")))
    assert sorted((m["To"], m["Body"]) for m in twilio.messages) == [
        ("+14155550132", "Visit Monday"), ("+14155550199", "Visit Monday")]
