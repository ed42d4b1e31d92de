"""Secure messaging: threads, read tracking and unread counts, auto-replies, staff-only notes."""

import base64
import hashlib

import psycopg

from fhir_server.auth.enforce import HIDDEN_FROM_PATIENTS
from fhir_server.messaging.templates import MESSAGE_CATEGORY, TEMPLATE_USE
from fhir_server.messaging.threads import ASSIGNED_TO_EXTENSION, AUTO_REPLY_IDENTIFIER, READ_EXTENSION
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


def test_threads_are_assigned_and_found_by_assignee(client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    doctor = f"Practitioner/{client.post('/Practitioner', json={'resourceType': 'Practitioner'}).json()['id']}"
    team = f"CareTeam/{client.post('/CareTeam', json={'resourceType': 'CareTeam'}).json()['id']}"
    patient = f"Patient/{pid}"

    def assigned(who: str) -> list[dict]:
        return [{"url": ASSIGNED_TO_EXTENSION, "valueReference": {"reference": who}}]

    first = client.post("/Communication", json=message(patient, "Organization/clinic", "Refill please",
                                                       "prescription-refill", extension=assigned(doctor)))
    assert first.status_code == 201, first.text
    first = first.json()
    second = client.post("/Communication", json=message(patient, "Organization/clinic", "Invoice?", "billing",
                                                        extension=assigned(team))).json()
    client.post("/Communication", json=message(patient, "Organization/clinic", "Unassigned", "other"))
    follow = client.post("/Communication", json=message(patient, doctor, "Also my inhaler", "prescription-refill",
                                                        partOf=[{"reference": f"Communication/{first['id']}"}])).json()

    def ids(**params: str) -> list[str]:
        response = client.get("/Communication", params=params)
        assert response.status_code == 200, response.text
        return sorted(entry["resource"]["id"] for entry in response.json().get("entry", []))

    assert ids(**{"assigned-to": doctor}) == [first["id"]]
    assert ids(**{"assigned-to": team}) == [second["id"]]
    # The messages of the threads assigned to someone, e.g. their unread ones, by chaining through the root.
    assert ids(**{"part-of:Communication.assigned-to": doctor, "status": "in-progress"}) == [follow["id"]]
    reassigned = client.put(f"/Communication/{first['id']}", json={**first, "extension": assigned(team)})
    assert reassigned.status_code == 200, reassigned.text
    assert ids(**{"assigned-to": team}) == sorted([first["id"], second["id"]]) and ids(**{"assigned-to": doctor}) == []

    on_reply = client.put(f"/Communication/{follow['id']}", json={**follow, "extension": assigned(doctor)})
    assert on_reply.status_code == 422 and "root" in on_reply.text
    for who in (patient, "Practitioner/nobody"):
        refused = client.post("/Communication", json=message(patient, "Organization/clinic", "?", extension=assigned(who)))
        assert refused.status_code == 422, refused.text
        assert refused.json()["issue"][0]["expression"] == ["Communication.extension"]


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def test_message_attachments_are_stored_as_documents(configured_client, db, tmp_path) -> None:
    async with configured_client(FHIR_DOCUMENT_DIR=str(tmp_path / "documents")) as http:
        pid = (await http.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        root = (await http.post("/Communication", json=message(f"Patient/{pid}", "Organization/clinic",
                                                               "See the rash", payload=[
            {"contentString": "See the rash"},
            {"contentAttachment": {"contentType": "image/png", "title": "rash.png",
                                   "data": base64.b64encode(PNG).decode()}}]))).json()
        attachment = root["payload"][1]["contentAttachment"]
        assert "data" not in attachment and attachment["url"].startswith("Binary/")
        assert attachment["size"] == len(PNG)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(PNG).digest()).decode()
        downloaded = await http.get(f"/{attachment['url']}")
        assert downloaded.status_code == 200 and downloaded.content == PNG
        assert downloaded.headers["content-type"] == "image/png"
        assert (tmp_path / "documents" / "sha256").exists()
        assert PNG[8:40].hex() not in db.execute("SELECT string_agg(encode(content, 'hex'), '') FROM resource").fetchone()[0]

        # A reply in the thread points at the same Binary, or at a DocumentReference.
        document = (await http.post("/DocumentReference", json={
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"url": attachment["url"], "contentType": "image/png"}}]})).json()["id"]
        reply = await http.post("/Communication", json=message(
            "Practitioner/x", f"Patient/{pid}", "Looks fine", inResponseTo=[{"reference": f"Communication/{root['id']}"}],
            payload=[{"contentAttachment": {"url": attachment["url"]}},
                     {"contentReference": {"reference": f"DocumentReference/{document}"}}]))
        assert reply.status_code == 201, reply.text
        assert reply.json()["payload"][0]["contentAttachment"]["size"] == len(PNG)

        before = db.execute("SELECT count(*) FROM resource").fetchone()[0]
        inline = {"contentAttachment": {"contentType": "image/png", "data": base64.b64encode(PNG + b"other").decode()}}
        for payload, status in (([{"contentAttachment": {"url": "Binary/missing"}}], 422),
                                ([inline, {"contentAttachment": {"url": "Binary/missing"}}], 422),  # no Binary left
                                ([{"contentReference": {"reference": "DocumentReference/missing"}}], 422),
                                ([{"contentAttachment": {"contentType": "application/x-msdownload",
                                                         "data": base64.b64encode(b"MZ...").decode()}}], 415)):
            refused = await http.post("/Communication", json=message(f"Patient/{pid}", "Organization/clinic", "x",
                                                                     payload=payload))
            assert refused.status_code == status, refused.text
            assert refused.json()["resourceType"] == "OperationOutcome"
        assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == before
