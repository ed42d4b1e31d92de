"""Message templates: `Basic` resources coded `message-template`, with `{variable}` placeholders and a
subject and body per channel.

    {"resourceType": "Basic",
     "code": {"coding": [{"system": "urn:fhir-server:CodeSystem/basic-kind", "code": "message-template"}]},
     "meta": {"tag": [{"system": "urn:fhir-server:CodeSystem/message-category", "code": "appointment"}]},
     "extension": [{"url": "urn:fhir-server:StructureDefinition/message-template", "extension": [
         {"url": "name", "valueString": "Appointment reminder"},
         {"url": "phi", "valueBoolean": false},
         {"url": "content", "extension": [{"url": "channel", "valueCode": "email"},
                                          {"url": "subject", "valueString": "Your visit on {date}"},
                                          {"url": "body", "valueString": "Dear {name}, ..."}]},
         {"url": "content", "extension": [{"url": "channel", "valueCode": "default"},
                                          {"url": "body", "valueString": "Visit {date}"}]}]}]}

A channel without content of its own uses `default`. `{{` and `}}` stand for literal braces. `phi` true
lets an e-mail carry the rendered text (otherwise e-mails say only that there is a message). Staff list
templates (canned responses) by category with `Basic?code=...|message-template&_tag=...message-category|X`;
the tag `template-use|auto-reply` makes one the auto-reply of its category (messaging/threads.py).

A CommunicationRequest uses one through `payload.contentReference` (`Basic/id`) with its variables in the
extension `template-variables` on that payload (one sub-extension per variable: url = name, valueString).
"""

import re
import string
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError, Issue
from fhir_server.messaging.codes import channel_of
from fhir_server.storage import repository

KIND = "urn:fhir-server:CodeSystem/basic-kind"
TEMPLATE_CODE = "message-template"
MESSAGE_CATEGORY = "urn:fhir-server:CodeSystem/message-category"
TEMPLATE_USE = "urn:fhir-server:CodeSystem/template-use"
TEMPLATE_EXTENSION = "urn:fhir-server:StructureDefinition/message-template"
TEMPLATE_VARIABLES_EXTENSION = "urn:fhir-server:StructureDefinition/template-variables"
DEFAULT_CHANNEL = "default"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True, slots=True)
class Content:
    subject: str | None
    body: str


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    name: str | None
    phi: bool
    contents: dict[str, Content]
    """By channel (sms, whatsapp, email, default)."""

    def content(self, channel: str) -> Content | None:
        return self.contents.get(channel) or self.contents.get(DEFAULT_CHANNEL)

    def variables(self, channel: str | None = None) -> set[str]:
        contents = [self.content(channel)] if channel else list(self.contents.values())
        return {name for content in contents if content for text in (content.subject, content.body) if text
                for name in placeholders(text)}


def is_template(resource: dict[str, Any] | None) -> bool:
    return bool(resource) and resource.get("resourceType") == "Basic" and any(
        coding.get("system") == KIND and coding.get("code") == TEMPLATE_CODE
        for coding in (resource.get("code") or {}).get("coding") or [] if isinstance(coding, dict))


def placeholders(text: str) -> list[str]:
    """The variable names in `text`; 422 for a placeholder that is not `{name}`."""
    try:
        names = [field for _, field, spec, conversion in string.Formatter().parse(text) if field is not None]
    except ValueError as error:
        raise FHIRError.of(422, "invalid", f"The template text {text!r} is malformed: {error}") from None
    for name in names:
        if not _NAME.match(name):
            raise FHIRError.of(422, "invalid", f"'{{{name}}}' is not a placeholder: use {{name}} with letters, "
                                               "digits, '_', '-' or '.'")
    return names


def _sub(extension: dict[str, Any], url: str, kind: str) -> Any:
    return next((item.get("value" + kind) for item in extension.get("extension") or [] if item.get("url") == url),
                None)


def parse(resource: dict[str, Any]) -> Template:
    """The template a Basic resource describes; 422 when it is not a usable one."""
    definition = next((extension for extension in resource.get("extension") or []
                       if extension.get("url") == TEMPLATE_EXTENSION), None)
    if not is_template(resource) or definition is None:
        raise FHIRError.of(422, "invalid", f"Basic/{resource.get('id')} is not a message template (code "
                                           f"{KIND}|{TEMPLATE_CODE} with the extension {TEMPLATE_EXTENSION})")
    contents: dict[str, Content] = {}
    for item in definition.get("extension") or []:
        if item.get("url") != "content":
            continue
        channel, body = _sub(item, "channel", "Code") or DEFAULT_CHANNEL, _sub(item, "body", "String")
        if not isinstance(body, str) or channel in contents:
            raise FHIRError.of(422, "invalid", f"Template content for '{channel}' needs one body and may appear "
                                               "once", "Basic.extension")
        contents[channel] = Content(_sub(item, "subject", "String"), body)
        for text in (contents[channel].subject, body):
            if text:
                placeholders(text)
    if not contents:
        raise FHIRError.of(422, "invalid", "A message template needs at least one content", "Basic.extension")
    return Template(resource.get("id", ""), _sub(definition, "name", "String"), _sub(definition, "phi", "Boolean")
                    is True, contents)


async def load(conn: AsyncConnection, reference: str) -> Template:
    """The template `Basic/id` names; 422 when there is none."""
    resource_type, _, fhir_id = reference.partition("/")
    stored = await repository.read(conn, "Basic", fhir_id) if resource_type == "Basic" and fhir_id else None
    if stored is None or stored.deleted:
        raise FHIRError.of(422, "not-found", f"The message template {reference} does not exist")
    return parse(stored.json())


def _fill(text: str, variables: dict[str, str]) -> str:
    return "".join(literal + (variables[field] if field is not None else "")
                   for literal, field, _, _ in string.Formatter().parse(text))


def check_variables(template: Template, channel: str | None, variables: dict[str, str],
                    who: str | None = None) -> list[Issue]:
    """Issues for placeholders without a value and for values no placeholder of the template uses."""
    wanted = template.variables(channel)
    used_anywhere = template.variables()
    where = f" (for {who})" if who else ""
    issues = [Issue("required", f"The template needs a value for '{{{name}}}'{where}")
              for name in sorted(wanted - set(variables))]
    issues += [Issue("invalid", f"The template has no placeholder '{{{name}}}'{where}")
               for name in sorted(set(variables) - used_anywhere)]
    return issues


def render(template: Template, channel: str, variables: dict[str, str]) -> Content:
    """The subject and body for `channel`; 422 for missing or unknown variables."""
    content = template.content(channel)
    if content is None:
        raise FHIRError.of(422, "not-supported", f"The template has no content for '{channel}' and no default")
    issues = check_variables(template, channel, variables)
    if issues:
        raise FHIRError(422, issues)
    return Content(_fill(content.subject, variables) if content.subject else None, _fill(content.body, variables))


def payload_template(request: dict[str, Any]) -> tuple[str, dict[str, str]] | None:
    """(template reference, variables) of a CommunicationRequest whose payload names a template."""
    for part in request.get("payload") or []:
        reference = (part.get("contentReference") or {}).get("reference") if isinstance(part, dict) else None
        if isinstance(reference, str) and reference.startswith("Basic/"):
            variables = next((extension for extension in part.get("extension") or []
                              if extension.get("url") == TEMPLATE_VARIABLES_EXTENSION), {})
            return reference, {item["url"]: str(item.get("valueString", "")) for item in
                               variables.get("extension") or [] if isinstance(item, dict) and "url" in item}
    return None


async def render_request(conn: AsyncConnection, request: dict[str, Any], channel: str) -> tuple[Content, bool]:
    """The rendered content of a CommunicationRequest whose payload names a template, and whether the
    template may carry PHI (in e-mails)."""
    reference, variables = payload_template(request)
    template = await load(conn, reference)
    return render(template, channel, variables), template.phi


async def check_request(conn: AsyncConnection, request: dict[str, Any]) -> None:
    """422 at write time for a CommunicationRequest whose template is missing or whose variables do not fit."""
    found = payload_template(request)
    if found is None:
        return
    template = await load(conn, found[0])
    issues = check_variables(template, channel_of(request.get("medium")), found[1])
    if issues:
        raise FHIRError(422, issues)
