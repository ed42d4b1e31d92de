"""The channels that carry messages: SMS and WhatsApp through Twilio's Messages API, e-mail over SMTP or SES.

`send` never raises for a delivery problem; it says what happened and whether trying again is safe. A
reply that never came (a read timeout) is `unknown`, never retried, so a message is not sent twice.
"""

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from functools import lru_cache
from typing import Any, Literal

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from fhir_server.messaging.codes import SES_MESSAGE_ID
from fhir_server.settings import Settings

TIMEOUT_SECONDS = 10
# SES errors worth another attempt later; any other error of SES refuses this message for good.
SES_RETRYABLE = frozenset({"TooManyRequestsException", "ThrottlingException", "LimitExceededException",
                           "InternalFailure", "ServiceUnavailable"})


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Literal["sent", "retry", "failed", "unknown"]
    provider_id: str | None = None
    provider_status: str | None = None
    reason: str | None = None
    """A notification-status-reason code when not sent."""
    detail: str | None = None
    provider_system: str | None = None
    """Identifier system of `provider_id` when it is not the channel's usual one (codes.PROVIDER_IDENTIFIERS)."""


def configured(settings: Settings, channel: str) -> bool:
    if channel == "email":
        if settings.email_provider == "ses":
            return bool(settings.ses_region and settings.smtp_from)
        return bool(settings.smtp_host and settings.smtp_from)
    sender = settings.twilio_from_number if channel == "sms" else settings.twilio_whatsapp_from
    return bool(settings.twilio_account_sid and settings.twilio_auth_token and sender)


def send(settings: Settings, channel: str, address: str, body: str, status_callback: str | None = None,
         subject: str | None = None) -> SendResult:
    if not configured(settings, channel):
        return SendResult("failed", reason="channel-not-configured",
                          detail=f"No {channel} channel is configured on this server")
    if channel == "email" and settings.email_provider == "ses":
        return _send_ses(settings, address, body, subject)
    if channel == "email":
        return _send_email(settings, address, body, subject)
    return _send_twilio(settings, channel, address, body, status_callback)


def twilio_client(settings: Settings) -> Client:
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token,
                    http_client=TwilioHttpClient(timeout=TIMEOUT_SECONDS))
    if settings.twilio_api_base:
        client.api.base_url = settings.twilio_api_base.rstrip("/")
    return client


def _send_twilio(settings: Settings, channel: str, address: str, body: str, status_callback: str | None
                 ) -> SendResult:
    prefix = "whatsapp:" if channel == "whatsapp" else ""
    sender = settings.twilio_whatsapp_from if channel == "whatsapp" else settings.twilio_from_number
    arguments = {"to": prefix + address, "from_": prefix + sender, "body": body}
    if status_callback:
        arguments["status_callback"] = status_callback
    try:
        message = twilio_client(settings).messages.create(**arguments)
    except TwilioRestException as error:
        detail = f"Twilio answered {error.status} (error {error.code}): {error.msg}"
        if error.status >= 500 or error.status == 429:
            return SendResult("retry", reason="provider-error", detail=detail)
        return SendResult("failed", reason="provider-rejected", detail=detail)
    except requests.exceptions.ReadTimeout:
        return SendResult("unknown", reason="delivery-outcome-unknown",
                          detail="Twilio did not answer in time; the message may have been sent")
    except requests.exceptions.RequestException as error:
        return SendResult("retry", reason="provider-error", detail=f"Twilio could not be reached: {error}")
    return SendResult("sent", provider_id=message.sid, provider_status=message.status)


def _send_email(settings: Settings, address: str, body: str, subject: str | None) -> SendResult:
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = address
    message["Subject"] = subject or settings.email_subject
    message["Message-ID"] = make_msgid(domain=settings.smtp_from.rpartition("@")[2] or None)
    message.set_content(body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=settings.smtp_ca_file))
            if settings.smtp_username:
                password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                smtp.login(settings.smtp_username, password)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        return SendResult("failed", reason="invalid-address", detail=f"The SMTP server refused the recipient: "
                                                                     f"{_smtp_reply(error.recipients)}")
    except smtplib.SMTPResponseException as error:
        detail = f"The SMTP server answered {error.smtp_code}: {error.smtp_error.decode(errors='replace')}"
        if 400 <= error.smtp_code < 500:
            return SendResult("retry", reason="provider-error", detail=detail)
        return SendResult("failed", reason="provider-rejected", detail=detail)
    except (OSError, smtplib.SMTPException) as error:
        return SendResult("retry", reason="provider-error", detail=f"The SMTP server could not be reached: {error}")
    return SendResult("sent", provider_id=message["Message-ID"], provider_status="sent")


def _smtp_reply(recipients: dict) -> str:
    return "; ".join(f"{code} {reply.decode(errors='replace')}" for code, reply in recipients.values())


@lru_cache(maxsize=4)
def _ses_client(region: str, endpoint_url: str | None) -> Any:
    """One client per configuration: boto3 clients are thread-safe and costly to make."""
    return boto3.session.Session().client("sesv2", region_name=region, endpoint_url=endpoint_url, config=Config(
        connect_timeout=TIMEOUT_SECONDS, read_timeout=TIMEOUT_SECONDS, retries={"max_attempts": 1}))


def _send_ses(settings: Settings, address: str, body: str, subject: str | None) -> SendResult:
    arguments: dict[str, Any] = {
        "FromEmailAddress": settings.smtp_from, "Destination": {"ToAddresses": [address]},
        "Content": {"Simple": {"Subject": {"Data": subject or settings.email_subject, "Charset": "UTF-8"},
                               "Body": {"Text": {"Data": body, "Charset": "UTF-8"}}}},
    }
    if settings.ses_configuration_set:
        arguments["ConfigurationSetName"] = settings.ses_configuration_set
    try:
        answer = _ses_client(settings.ses_region, settings.ses_endpoint_url).send_email(**arguments)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        detail = f"SES answered {code}: {error.response.get('Error', {}).get('Message', '')}"
        if code in SES_RETRYABLE or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            return SendResult("retry", reason="provider-error", detail=detail)
        return SendResult("failed", reason="provider-rejected", detail=detail)
    except ReadTimeoutError:
        return SendResult("unknown", reason="delivery-outcome-unknown",
                          detail="SES did not answer in time; the message may have been sent")
    except BotoCoreError as error:
        return SendResult("retry", reason="provider-error", detail=f"SES could not be reached: {error}")
    return SendResult("sent", provider_id=answer["MessageId"], provider_status="sent", provider_system=SES_MESSAGE_ID)
