"""Message templates: $render, variable checks, and CommunicationRequests that send a template."""

from fhir_server.messaging.templates import (KIND, MESSAGE_CATEGORY, TEMPLATE_CODE, TEMPLATE_EXTENSION,
                                             TEMPLATE_VARIABLES_EXTENSION)
from tests.messaging.helpers import MEDIA, eventually, patient, read, reason, resources


def template(phi: bool = False, category: str = "appointment") -> dict:
    def content(channel: str, body: str, subject: str | None = None) -> dict:
        parts = [{"url": "channel", "valueCode": channel}, {"url": "body", "valueString": body}]
        if subject:
            parts.append({"url": "subject", "valueString": subject})
        return {"url": "content", "extension": parts}

    return {"resourceType": "Basic", "code": {"coding": [{"system": KIND, "code": TEMPLATE_CODE}]},
            "meta": {"tag": [{"system": MESSAGE_CATEGORY, "code": category}]},
            "extension": [{"url": TEMPLATE_EXTENSION, "extension": [
                {"url": "name", "valueString": "Reminder"}, {"url": "phi", "valueBoolean": phi},
                content("email", "Dear {name}, your visit is on {date}. {{bring your card}}", "Visit on {date}"),
                content("default", "Visit {date}")]}]}


def variables(**values: str) -> list[dict]:
    return [{"name": "variable", "part": [{"name": "name", "valueString": name}, {"name": "value", "valueString": v}]}
            for name, v in values.items()]


def templated_request(recipient: str, template_id: str, channel: str = "sms", **values: str) -> dict:
    system, code = MEDIA[channel]
    return {"resourceType": "CommunicationRequest", "status": "active", "recipient": [{"reference": recipient}],
            "medium": [{"coding": [{"system": system, "code": code}]}],
            "payload": [{"contentReference": {"reference": f"Basic/{template_id}"},
                         "extension": [{"url": TEMPLATE_VARIABLES_EXTENSION, "extension": [
                             {"url": name, "valueString": v} for name, v in values.items()]}]}]}


def _render(client, template_id: str, channel: str, **values: str):
    return client.post(f"/Basic/{template_id}/$render", json={"resourceType": "Parameters", "parameter": [
        {"name": "channel", "valueCode": channel}, *variables(**values)]})


def test_render_per_channel_and_variable_checks(client) -> None:
    created = client.post("/Basic", json=template())
    assert created.status_code == 201, created.text
    tid = created.json()["id"]
    email = _render(client, tid, "email", name="Pat", date="1 Dec")
    assert email.status_code == 200, email.text
    assert {p["name"]: p.get("valueString") for p in email.json()["parameter"]} == {
        "channel": None, "subject": "Visit on 1 Dec", "body": "Dear Pat, your visit is on 1 Dec. {bring your card}",
        "phi": None}
    sms = _render(client, tid, "sms", date="1 Dec")
    assert [p["valueString"] for p in sms.json()["parameter"] if p["name"] == "body"] == ["Visit 1 Dec"]
    missing = _render(client, tid, "email", date="1 Dec")
    assert missing.status_code == 422 and "needs a value for '{name}'" in missing.text
    unknown = _render(client, tid, "sms", date="1 Dec", colour="red")
    assert unknown.status_code == 422 and "no placeholder '{colour}'" in unknown.text
    listed = client.get("/Basic", params={"code": f"{KIND}|{TEMPLATE_CODE}", "_tag": f"{MESSAGE_CATEGORY}|appointment"})
    assert [entry["resource"]["id"] for entry in listed.json()["entry"]] == [tid]


def test_preview_of_an_unsaved_template_and_a_malformed_one(client) -> None:
    preview = client.post("/Basic/$render", json={"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": template()}, *variables(date="today")]})
    assert preview.status_code == 200 and "Visit today" in preview.text
    broken = template()
    broken["extension"][0]["extension"][2]["extension"][1]["valueString"] = "Hello {name"
    assert client.post("/Basic", json=broken).status_code == 422


def test_a_request_with_unknown_variables_is_refused_at_write(client) -> None:
    tid = client.post("/Basic", json=template()).json()["id"]
    pid = client.post("/Patient", json=patient()).json()["id"]
    refused = client.post("/CommunicationRequest", json=templated_request(f"Patient/{pid}", tid, size="L"))
    assert refused.status_code == 422 and "size" in refused.text
    missing = client.post("/CommunicationRequest", json=templated_request(f"Patient/{pid}", "nope", date="x"))
    assert missing.status_code == 422 and "Basic/nope does not exist" in missing.text


async def test_dispatch_renders_the_template(background_app, twilio, smtp, db) -> None:
    async with background_app() as (_, client):
        tid = (await client.post("/fhir/Basic", json=template())).json()["id"]
        phi_tid = (await client.post("/fhir/Basic", json=template(phi=True))).json()["id"]
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        sms = (await client.post("/fhir/CommunicationRequest", json=templated_request(
            f"Patient/{pid}", tid, name="Pat", date="1 Dec"))).json()
        await client.post("/fhir/CommunicationRequest", json=templated_request(
            f"Patient/{pid}", tid, "email", name="Pat", date="1 Dec"))
        await client.post("/fhir/CommunicationRequest", json=templated_request(
            f"Patient/{pid}", phi_tid, "email", name="Pat", date="2 Dec"))
        await eventually(lambda: twilio.messages and len(smtp.mails) == 2)
        await eventually(lambda: read(db, "CommunicationRequest", sms["id"])["status"] == "completed")
    assert twilio.messages[0]["Body"] == "Visit 1 Dec"
    mails = sorted(mail for _, _, mail in smtp.mails)
    assert any(b"You have a new message" in mail and b"Pat" not in mail and b"Subject: New message" in mail
               for mail in mails)
    assert any(b"Dear Pat, your visit is on 2 Dec" in mail and b"Subject: Visit on 2 Dec" in mail for mail in mails)


async def test_a_template_in_use_is_protected_and_its_loss_fails_visibly(background_app, twilio, db) -> None:
    async with background_app(FHIR_BACKGROUND="off") as (_, client):
        tid = (await client.post("/fhir/Basic", json=template())).json()["id"]
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        await client.post("/fhir/CommunicationRequest", json=templated_request(f"Patient/{pid}", tid, date="1 Dec"))
        assert (await client.delete(f"/fhir/Basic/{tid}")).status_code == 409
    async with background_app(FHIR_BACKGROUND="off", FHIR_ENFORCE_REFERENTIAL_INTEGRITY_ON_DELETE="false") \
            as (_, client):
        tid = (await client.post("/fhir/Basic", json=template())).json()["id"]
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest", json=templated_request(
            f"Patient/{pid}", tid, date="1 Dec"))).json()["id"]
        assert (await client.delete(f"/fhir/Basic/{tid}")).status_code in (200, 204)
    async with background_app():
        await eventually(lambda: all(r["status"] != "active" for r in resources(db, "CommunicationRequest")))
    request = read(db, "CommunicationRequest", rid)
    assert request["status"] == "on-hold" and reason(request) == "no-content"
    [attempt] = [a for a in resources(db, "Communication")
                 if a["basedOn"] == [{"reference": f"CommunicationRequest/{rid}"}]]
    assert "template could not be rendered" in attempt["statusReason"]["text"]
    assert [message["Body"] for message in twilio.messages] == ["Visit 1 Dec"]  # the first request's, unharmed
