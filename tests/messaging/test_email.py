"""E-mail end to end: Amazon SES through boto3 against moto's endpoint, and SMTP with STARTTLS and AUTH."""

import logging

import boto3
import pytest

from fhir_server.messaging.codes import SES_MESSAGE_ID
from tests.messaging.helpers import communication_request, eventually, patient, read, reason, resources

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "",
       "AWS_PROFILE": "", "FHIR_EMAIL_PROVIDER": "ses", "FHIR_SES_REGION": "us-east-1"}


def _ses_sent(endpoint: str) -> list:
    """What moto's SES backend recorded as sent (its documented way to inspect sent mail)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return list(ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages)


@pytest.fixture
def ses(moto_endpoint: str) -> str:
    """moto's SES with the clinic's sender verified (SES refuses unverified senders) and no mail sent yet."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages.clear()
    boto3.session.Session().client("sesv2", endpoint_url=moto_endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing",
                                   ).create_email_identity(EmailIdentity="clinic@example.org")
    return moto_endpoint


async def test_email_through_ses_records_the_ses_message_id(background_app, ses, smtp, db) -> None:
    async with background_app(**AWS, FHIR_SES_ENDPOINT_URL=ses, FHIR_EMAIL_INCLUDE_CONTENT="true",
                              FHIR_EMAIL_SUBJECT="From your clinic") as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
    [sent] = _ses_sent(ses)
    assert (sent.source, sent.destinations["ToAddresses"]) == ("clinic@example.org", ["pat@example.org"])
    assert (sent.subject, sent.body) == ("From your clinic", "Your appointment is tomorrow at 9:00")
    assert smtp.mails == []  # SES, not SMTP
    [communication] = resources(db, "Communication")
    assert communication["status"] == "completed"
    assert [i["value"] for i in communication["identifier"] if i["system"] == SES_MESSAGE_ID] == [sent.id]


async def test_ses_refusal_ends_not_done(background_app, ses, db) -> None:
    async with background_app(**AWS, FHIR_SES_ENDPOINT_URL=ses, FHIR_SMTP_FROM="unverified@example.org") as (_, c):
        pid = (await c.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await c.post("/fhir/CommunicationRequest",
                            json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and reason(request) == "provider-rejected"
    [communication] = resources(db, "Communication")
    assert communication["status"] == "not-done" and reason(communication) == "provider-rejected"
    assert "MessageRejected" in communication["statusReason"]["text"]
    assert _ses_sent(ses) == []


async def test_unreachable_ses_is_retried_then_dead_lettered(background_app, db) -> None:
    from tests.conftest import free_port

    async with background_app(**AWS, FHIR_SES_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                              FHIR_RETRY_MAX_ATTEMPTS='{"email": 2}') as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and reason(request) == "max-attempts-exceeded"
    assert [(c["status"], reason(c)) for c in resources(db, "Communication")] == [("not-done", "provider-error")] * 2


async def test_ses_needs_a_region(background_app, db) -> None:
    async with background_app(FHIR_EMAIL_PROVIDER="ses", FHIR_SES_REGION="") as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        await client.post("/fhir/CommunicationRequest", json=communication_request(f"Patient/{pid}", "email"))
        [communication] = await eventually(lambda: resources(db, "Communication"))
    assert communication["status"] == "not-done" and reason(communication) == "channel-not-configured"


async def test_smtp_with_starttls_and_auth(background_app, smtp_tls_server, db, caplog) -> None:
    inbox, port, ca_file = smtp_tls_server
    inbox.mails.clear()
    inbox.logins.clear()
    caplog.set_level(logging.DEBUG)
    async with background_app(FHIR_SMTP_PORT=str(port), FHIR_SMTP_STARTTLS="true", FHIR_SMTP_CA_FILE=str(ca_file),
                              FHIR_SMTP_PASSWORD="secret") as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        await eventually(lambda: read(db, "CommunicationRequest", rid)["status"] == "completed")
    [(sender, recipients, _)] = inbox.mails
    assert (sender, recipients) == ("clinic@example.org", ["pat@example.org"])
    assert inbox.logins == ["mailer"]  # AUTH, which this server offers only after STARTTLS
    assert "secret" not in caplog.text
    stored = db.execute("SELECT string_agg(convert_from(content, 'UTF8'), '') FROM resource_version").fetchone()[0]
    assert "secret" not in stored


async def test_starttls_verifies_the_server_certificate(background_app, smtp_tls_server, db) -> None:
    """Without the test CA the certificate is not trusted: nothing is sent, and the Communication says why."""
    inbox, port, _ = smtp_tls_server
    inbox.mails.clear()
    async with background_app(FHIR_SMTP_PORT=str(port), FHIR_SMTP_STARTTLS="true", FHIR_SMTP_CA_FILE="",
                              FHIR_RETRY_MAX_ATTEMPTS='{"email": 1}') as (_, client):
        pid = (await client.post("/fhir/Patient", json=patient())).json()["id"]
        rid = (await client.post("/fhir/CommunicationRequest",
                                 json=communication_request(f"Patient/{pid}", "email"))).json()["id"]
        request = await eventually(lambda: (r := read(db, "CommunicationRequest", rid))["status"] != "active" and r)
    assert request["status"] == "on-hold" and inbox.mails == []
    [communication] = resources(db, "Communication")
    assert communication["status"] == "not-done" and "CERTIFICATE_VERIFY_FAILED" in communication["statusReason"]["text"]
