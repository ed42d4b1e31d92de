"""Twilio's webhooks: signed status callbacks and inbound messages, STOP and START as Consent."""

from twilio.request_validator import RequestValidator

from fhir_server.messaging.codes import PROVIDER_IDENTIFIERS, PROVIDER_STATUS_EXTENSION
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN


async def _post_signed(client, path: str, params: dict[str, str], token: str = AUTH_TOKEN):
    signature = RequestValidator(token).compute_signature(f"http://test{path}", params)
    return await client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def _provider_status(communication) -> str | None:
    return next((e["valueCode"] for e in communication.get("extension", []) if e["url"] == PROVIDER_STATUS_EXTENSION),
                None)


async def _sent_sms(client, db, twilio) -> dict:
    pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
    await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}"))
    return await eventually(lambda: [c for c in resources(db, "Communication") if c["status"] == "completed"])


async def test_status_callbacks_move_forward_only(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        [communication] = await _sent_sms(client, db, twilio)
        sid = next(i["value"] for i in communication["identifier"] if i["system"] == PROVIDER_IDENTIFIERS["sms"])
        assert _provider_status(communication) == "queued"

        def status(value: str) -> dict[str, str]:
            return {"AccountSid": ACCOUNT_SID, "MessageSid": sid, "MessageStatus": value}

        assert (await _post_signed(client, "/twilio/status", status("delivered"))).status_code == 204
        assert _provider_status(read(db, "Communication", communication["id"])) == "delivered"
        # Late or out-of-order callbacks never overwrite a terminal status.
        for late in ("sent", "failed"):
            assert (await _post_signed(client, "/twilio/status", status(late))).status_code == 204
        stored = read(db, "Communication", communication["id"])
        assert _provider_status(stored) == "delivered" and stored["status"] == "completed"


async def test_failed_delivery_makes_communication_not_done(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        [communication] = await _sent_sms(client, db, twilio)
        params = {"AccountSid": ACCOUNT_SID, "MessageStatus": "undelivered", "ErrorCode": "30003",
                  "MessageSid": "SMunused"}
        path = f"/twilio/status?communication={communication['id']}"  # as passed to Twilio with each message
        assert (await _post_signed(client, path, params)).status_code == 204
        stored = read(db, "Communication", communication["id"])
        assert stored["status"] == "not-done" and reason(stored) == "undelivered"
        assert "30003" in stored["statusReason"]["text"]


async def test_forged_or_unsigned_callbacks_are_refused(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        [communication] = await _sent_sms(client, db, twilio)
        params = {"MessageSid": "SMx", "MessageStatus": "failed"}
        path = f"/twilio/status?communication={communication['id']}"
        assert (await _post_signed(client, path, params, token="not-the-token")).status_code == 403
        assert (await client.post(path, data=params)).status_code == 403
        signature = RequestValidator(AUTH_TOKEN).compute_signature(f"http://test{path}", params)
        tampered = {**params, "MessageStatus": "delivered"}
        assert (await client.post(path, data=tampered, headers={"X-Twilio-Signature": signature})).status_code == 403
        assert (await _post_signed(client, "/twilio/inbound", {"From": "+14155550132", "Body": "STOP"},
                                   token="forged")).status_code == 403
    assert read(db, "Communication", communication["id"])["status"] == "completed"
    assert resources(db, "Consent") == []


async def test_inbound_message_becomes_communication_from_patient(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient(phone="(415) 555-0132"))).json()["id"]
        response = await _post_signed(client, "/twilio/inbound", {
            "AccountSid": ACCOUNT_SID, "MessageSid": "SMin1", "From": "+14155550132", "To": "+15005550006",
            "Body": "Can I come at 10 instead?"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    [communication] = resources(db, "Communication")
    assert communication["sender"] == {"reference": f"Patient/{pid}"}
    assert communication["payload"] == [{"contentString": "Can I come at 10 instead?"}]
    assert communication["status"] == "completed" and "received" in communication


async def test_stop_opts_out_and_start_opts_back_in(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        inbound = {"AccountSid": ACCOUNT_SID, "MessageSid": "SMin2", "From": "+14155550132", "Body": " stop "}
        assert (await _post_signed(client, "/twilio/inbound", inbound)).status_code == 200
        [consent] = resources(db, "Consent")
        assert consent["provision"]["type"] == "deny" and consent["patient"] == {"reference": f"Patient/{pid}"}

        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
        assert request["status"] == "on-hold" and reason(request) == "opted-out"
        assert twilio.requests == 0
        # E-mail is another channel: the SMS opt-out does not stop it.
        email = (await client.post("/fhir/CommunicationRequest",
                                   json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", email)["status"] == "completed")

        assert (await _post_signed(client, "/twilio/inbound", {**inbound, "Body": "START"})).status_code == 200
        [consent] = resources(db, "Consent")
        assert consent["provision"]["type"] == "permit" and consent["meta"]["versionId"] == "2"
        again = (await client.post("/fhir/CommunicationRequest",
                                   json=communication_request(f"Patient/{pid}"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", again)["status"] == "completed")
    assert len(twilio.messages) == 1
