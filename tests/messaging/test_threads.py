"""Secure messaging: threads, read tracking and unread counts, auto-replies, staff-only notes."""

import psycopg

from fhir_server.auth.enforce import HIDDEN_FROM_PATIENTS
from fhir_server.messaging.templates import MESSAGE_CATEGORY, TEMPLATE_USE
from fhir_server.messaging.threads import AUTO_REPLY_IDENTIFIER, READ_EXTENSION
from tests.auth.test_enforcement import bearer, patient_token, system_token
from tests.messaging.helpers import eventually, resources
from tests.messaging.test_templates import template


def message(sender: str, recipient: str, text: str, category: str = "medical-question", **extra) -> dict:
    return {"resourceType": "Communication", "status": "in-progress",
            "category": [{"coding": [{"system": MESSAGE_CATEGORY, "code": category}]}],
            "sender": {"reference": sender}, "recipient": [{"reference": recipient}],
            "sent": "2026-11-23T10:00:00Z", "payload": [{"contentString": text}], **extra}


def _count(client, **params: str) -> int:
    response = client.get("/Communication", params={**params, "_summary": "count"})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def test_threads_and_unread_counts(client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    doctor = client.post("/Practitioner", json={"resourceType": "Practitioner"}).json()["id"]
    patient, practitioner = f"Patient/{pid}", f"Practitioner/{doctor}"
    root = client.post("/Communication", json=message(patient, practitioner, "Is this rash normal?")).json()
    follow = client.post("/Communication", json=message(patient, practitioner, "It itches", partOf=[
        {"reference": f"Communication/{root['id']}"}])).json()
    reply = client.post("/Communication", json=message(practitioner, patient, "Send a photo", inResponseTo=[
        {"reference": f"Communication/{follow['id']}"}])).json()
    assert reply["partOf"] == [{"reference": f"Communication/{root['id']}"}]
    thread = client.get("/Communication", params={"part-of": f"Communication/{root['id']}", "_sort": "_lastUpdated"})
    assert [entry["resource"]["id"] for entry in thread.json()["entry"]] == [follow["id"], reply["id"]]

    assert _count(client, recipient=practitioner, status="in-progress") == 2
    assert _count(client, recipient=patient, status="in-progress") == 1
    read = client.patch(f"/Communication/{root['id']}", headers={"Content-Type": "application/json-patch+json"},
                        json=[{"op": "replace", "path": "/status", "value": "completed"}])
    assert read.status_code == 200, read.text
    [stamp] = [extension for extension in read.json()["extension"] if extension["url"] == READ_EXTENSION]
    assert read.json()["received"] == stamp["valueDateTime"]
    assert _count(client, recipient=practitioner, status="in-progress") == 1
    bad = client.post("/Communication", json=message(patient, practitioner, "?", inResponseTo=[
        {"reference": "Communication/missing"}]))
    assert bad.status_code == 422


async def test_auto_reply_when_a_patient_starts_a_thread(background_app, db) -> None:
    async with background_app() as (_, client):
        canned = template(category="billing")
        canned["meta"]["tag"].append({"system": TEMPLATE_USE, "code": "auto-reply"})
        canned["extension"][0]["extension"][3]["extension"][1]["valueString"] = "Billing answers within 2 days."
        assert (await client.post("/fhir/Basic", json=canned)).status_code == 201
        pid = (await client.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
        billing = (await client.post("/fhir/Communication", json=message(
            f"Patient/{pid}", "Organization/clinic", "Why this invoice?", "billing"))).json()
        other = (await client.post("/fhir/Communication", json=message(
            f"Patient/{pid}", "Organization/clinic", "Hello", "other"))).json()

        def replies():
            return [c for c in resources(db, "Communication")
                    if any(i["system"] == AUTO_REPLY_IDENTIFIER for i in c.get("identifier", []))]

        [reply] = await eventually(replies)
        await eventually(lambda: db.execute("SELECT count(*) FROM outbox WHERE state = 'done'").fetchone()[0] == 2)
    assert reply["payload"] == [{"contentString": "Billing answers within 2 days."}]
    assert reply["partOf"] == reply["inResponseTo"] == [{"reference": f"Communication/{billing['id']}"}]
    assert reply["recipient"] == [{"reference": f"Patient/{pid}"}] and reply["status"] == "in-progress"
    assert other["id"] not in str(replies())


async def test_staff_only_notes_are_invisible_to_patient_scopes(configured_client, database_url) -> None:
    async with configured_client(FHIR_AUTH="smart") as http, \
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
        staff = bearer(await system_token(aconn, http, "system/*.cruds"))
        pid = (await http.post("/Patient", json={"resourceType": "Patient"}, headers=staff)).json()["id"]
        subject = {"subject": {"reference": f"Patient/{pid}"}}
        visible = (await http.post("/Communication", headers=staff, json=message(
            "Practitioner/x", f"Patient/{pid}", "Results are fine", **subject))).json()["id"]
        system, code = HIDDEN_FROM_PATIENTS
        note = (await http.post("/Communication", headers=staff, json=message(
            "Practitioner/x", "Practitioner/y", "Patient sounded anxious", meta={"security": [
                {"system": system, "code": code}]}, **subject))).json()["id"]
        patient = bearer(await patient_token(aconn, http, pid, "patient/*.rs"))

        found = (await http.get("/Communication", headers=patient)).json()
        assert [entry["resource"]["id"] for entry in found["entry"]] == [visible]
        assert (await http.get("/Communication", params={"_summary": "count"}, headers=patient)).json()["total"] == 1
        assert (await http.get(f"/Communication/{note}", headers=patient)).status_code == 404
        included = (await http.get("/Patient", params={"_revinclude": "Communication:subject"}, headers=patient)).json()
        assert note not in str(included) and visible in str(included)
        everything = (await http.get(f"/Patient/{pid}/$everything", headers=patient)).json()
        assert note not in str(everything) and visible in str(everything)
        assert (await http.get(f"/Communication/{note}", headers=staff)).status_code == 200
        assert (await http.get("/Communication", params={"_summary": "count"}, headers=staff)).json()["total"] == 2
