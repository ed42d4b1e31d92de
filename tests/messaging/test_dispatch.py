"""End to end in the embedded mode: a CommunicationRequest created over HTTP is sent by the in-process worker."""

from fhir_server.messaging.codes import DELIVERY_EXTENSION, PROVIDER_IDENTIFIERS
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources


async def test_sms_is_sent_and_recorded_as_communication(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        created = await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}"))
        assert created.status_code == 201, created.text
        rid = created.json()["id"]

        def completed():
            """the request is completed"""
            return read(db, "CommunicationRequest", rid)["status"] == "completed"

        await eventually(completed)
    assert [(m["To"], m["From"], m["Body"]) for m in twilio.messages] == [
        ("+14155550132", "+15005550006", "Your appointment is tomorrow at 9:00")]
    [communication] = resources(db, "Communication")
    assert communication["status"] == "completed"
    assert communication["basedOn"] == [{"reference": f"CommunicationRequest/{rid}"}]
    assert communication["recipient"] == [{"reference": f"Patient/{pid}"}]
    assert communication["subject"] == {"reference": f"Patient/{pid}"}
    assert communication["payload"] == [{"contentString": "Your appointment is tomorrow at 9:00"}]
    assert communication["medium"][0]["coding"][0]["code"] == "SMSWRIT"
    assert "sent" in communication
    sids = [i["value"] for i in communication["identifier"] if i["system"] == PROVIDER_IDENTIFIERS["sms"]]
    assert sids and sids[0].startswith("SM")
    request = read(db, "CommunicationRequest", rid)
    [delivery] = [e for e in request["extension"] if e["url"] == DELIVERY_EXTENSION]
    assert delivery["extension"] == [{"url": "attempts", "valueInteger": 1}]
    assert db.execute("SELECT state, attempts FROM outbox").fetchall() == [("done", 1)]


async def test_whatsapp_goes_through_twilio_with_prefixes(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}", "whatsapp"))
        await eventually(lambda: twilio.messages)
    assert twilio.messages[0]["To"] == "whatsapp:+14155550132"
    assert twilio.messages[0]["From"] == "whatsapp:+14155238886"


async def test_email_has_no_content_by_default(background_app, smtp, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}", "email", "HIV test result"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
    [(sender, recipients, content)] = smtp.mails
    assert (sender, recipients) == ("clinic@example.org", ["pat@example.org"])
    assert b"You have a new message" in content and b"HIV" not in content
    assert smtp.logins == ["mailer"]
    [communication] = resources(db, "Communication")
    assert communication["payload"] == [{"contentString": "You have a new message"}]


async def test_email_content_when_allowed(background_app, smtp, db) -> None:
    async with background_app(FHIR_EMAIL_INCLUDE_CONTENT="true") as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}", "email"))
        await eventually(lambda: smtp.mails)
    assert b"Your appointment is tomorrow" in smtp.mails[0][2]


async def test_channel_not_configured(background_app, twilio, db) -> None:
    async with background_app(FHIR_TWILIO_ACCOUNT_SID="") as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and reason(request) == "channel-not-configured"
    [communication] = resources(db, "Communication")
    assert communication["status"] == "not-done" and reason(communication) == "channel-not-configured"
    assert twilio.requests == 0


async def test_missing_and_invalid_addresses(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        without = (await client.post("/fhir/Patient", json=patient(phone=None))).json()["id"]
        invalid = (await client.post("/fhir/Patient", json=patient(phone="12"))).json()["id"]
        for pid in (without, invalid):
            await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}"))
        await eventually(lambda: len(resources(db, "Communication")) == 2)
    reasons = {c["recipient"][0]["reference"]: (c["status"], reason(c)) for c in resources(db, "Communication")}
    assert reasons == {f"Patient/{without}": ("not-done", "no-address"),
                       f"Patient/{invalid}": ("not-done", "invalid-address")}
    assert twilio.requests == 0


async def test_other_communication_requests_are_left_alone(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        plain = {"resourceType": "CommunicationRequest", "status": "active",
                 "payload": [{"contentString": "no medium"}]}
        assert (await client.post("/fhir/CommunicationRequest", json=plain)).status_code == 201
        draft = communication_request("Patient/x", status="draft")
        assert (await client.post("/fhir/CommunicationRequest", json=draft)).status_code == 201
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
