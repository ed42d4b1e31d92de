"""Twilio's webhooks: signed status callbacks and inbound messages, STOP and START as Consent."""

import orjson
from twilio.request_validator import RequestValidator

from fhir_server.messaging.codes import PROVIDER_IDENTIFIERS, PROVIDER_STATUS_EXTENSION
from tests.messaging.helpers import (MEDIA, communication_request, eventually, patient, raw, read, reason,
                                    resources)
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


def _opt_out(performer: str, channel: str = "sms") -> dict:
    """A Consent as a client records someone's opt-out: the person is its performer (the consentor)."""
    system, code = MEDIA[channel]
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "performer": [{"reference": performer}],
            "provision": {"type": "deny", "code": [{"coding": [{"system": system, "code": code}]}]}}


async def test_related_people_and_practitioners_opt_out_like_patients(background_app, twilio, smtp, db) -> None:
    async with background_app() as (_, client):
        mother = (await client.post("/fhir/RelatedPerson", json={
            **patient(), "resourceType": "RelatedPerson", "patient": {"reference": "Patient/child"}})).json()["id"]
        doctor = (await client.post("/fhir/Practitioner", json={
            **patient(phone="+1 415 555 0177", email="doc@example.org"), "resourceType": "Practitioner"})).json()["id"]
        for consent in (_opt_out(f"RelatedPerson/{mother}"), _opt_out(f"Practitioner/{doctor}", "email")):
            assert (await client.post("/fhir/Consent", json=consent)).status_code == 201
        sends = [(f"RelatedPerson/{mother}", "sms"), (f"Practitioner/{doctor}", "email"),
                 (f"RelatedPerson/{mother}", "email"), (f"Practitioner/{doctor}", "sms")]
        ids = [(await client.post("/fhir/CommunicationRequest", json=communication_request(who, channel))).json()["id"]
               for who, channel in sends]
        await eventually(lambda: all(read(db, "CommunicationRequest", rid)["status"] != "active" for rid in ids))
    outcomes = [(read(db, "CommunicationRequest", rid)["status"], reason(read(db, "CommunicationRequest", rid)))
                for rid in ids]
    assert outcomes == [("on-hold", "opted-out"), ("on-hold", "opted-out"), ("completed", None), ("completed", None)]
    by_request = {c["basedOn"][0]["reference"]: c for c in resources(db, "Communication")}
    refused = by_request[f"CommunicationRequest/{ids[0]}"]
    assert refused["status"] == "not-done" and reason(refused) == "opted-out"
    assert refused["recipient"] == [{"reference": f"RelatedPerson/{mother}"}]
    assert f"RelatedPerson/{mother} has opted out of sms" in refused["statusReason"]["text"]
    assert [m["To"] for m in twilio.messages] == ["+14155550177"]  # only the practitioner's SMS
    assert [recipients for _, recipients, _ in smtp.mails] == [["pat@example.org"]]  # only the mother's e-mail


async def test_stop_from_a_related_person_records_their_opt_out(background_app, twilio, db) -> None:
    async with background_app() as (_, client):
        mother = (await client.post("/fhir/RelatedPerson", json={
            **patient(), "resourceType": "RelatedPerson", "patient": {"reference": "Patient/child"}})).json()["id"]
        inbound = {"AccountSid": ACCOUNT_SID, "MessageSid": "SMin3", "From": "+14155550132", "Body": "STOP"}
        assert (await _post_signed(client, "/twilio/inbound", inbound)).status_code == 200
        [consent] = resources(db, "Consent")
        assert consent["performer"] == [{"reference": f"RelatedPerson/{mother}"}] and "patient" not in consent
        found = await client.get("/fhir/Consent", params={"consentor": f"RelatedPerson/{mother}"})
        assert [entry["resource"]["id"] for entry in found.json()["entry"]] == [consent["id"]]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"RelatedPerson/{mother}"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and reason(request) == "opted-out" and twilio.requests == 0
    [message] = [c for c in resources(db, "Communication") if c["status"] == "completed"]
    assert message["sender"] == {"reference": f"RelatedPerson/{mother}"} and "subject" not in message


async def test_server_rewrites_keep_written_decimals(background_app, twilio, db) -> None:
    """The worker completing a request and a status callback rewriting its Communication keep `1.50` as written."""
    score = b'{"url":"http://example.org/fhir/StructureDefinition/score","valueDecimal":1.50}'
    headers = {"Content-Type": "application/fhir+json"}
    async with background_app() as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        request = orjson.dumps(communication_request(f"Patient/{pid}"))[:-1] + b',"extension":[' + score + b"]}"
        request_id = (await client.post("/fhir/CommunicationRequest", content=request, headers=headers)).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", request_id)["status"] == "completed")
        assert score in raw(db, "CommunicationRequest", request_id)
        communication = (b'{"resourceType":"Communication","id":"scored","status":"in-progress",'
                         b'"subject":{"reference":"Patient/%s"},"extension":[%s]}') % (pid.encode(), score)
        assert (await client.put("/fhir/Communication/scored", content=communication, headers=headers)).status_code == 201
        params = {"AccountSid": ACCOUNT_SID, "MessageStatus": "undelivered", "ErrorCode": "30003", "MessageSid": "SMx"}
        assert (await _post_signed(client, "/twilio/status?communication=scored", params)).status_code == 204
        assert read(db, "Communication", "scored")["status"] == "not-done"
        assert score in raw(db, "Communication", "scored")
        assert score in (await client.get("/fhir/Communication/scored")).content
