"""Where a resource keeps prose worth embedding: its narrative, and the type-specific places.

Communication payload strings and attachments, DocumentReference description and attachments,
QuestionnaireResponse questions with their answers, and any resource's narrative (`text.div` without markup).
Pure functions: reading attachment bytes is `embeddings.attachments`.
"""

from html.parser import HTMLParser
from typing import Any

from fhir_server.settings import get_settings

_BLOCKS = frozenset({"p", "div", "br", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul",
                     "ol", "pre", "blockquote"})

# The element whose presence means a resource of the type has prose besides its narrative (DocumentReference
# content is required, and holds the attachments).
PROSE_ELEMENTS = {"Communication": "payload", "DocumentReference": "content", "QuestionnaireResponse": "item"}


class _Narrative(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n\n")  # a block ends a sentence, even without a full stop

    def handle_endtag(self, tag: str) -> None:
        self.handle_starttag(tag, [])

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def narrative_text(div: str) -> str:
    parser = _Narrative()
    parser.feed(div)
    parser.close()
    return "".join(parser.parts).strip()


def has_text(resource: dict[str, Any] | None) -> bool:
    """Whether `resource` may have something to embed (cheap: it decides whether a write schedules the work)."""
    if not resource:
        return False
    if isinstance(resource.get("text"), dict) and resource["text"].get("div"):
        return True
    field = PROSE_ELEMENTS.get(resource.get("resourceType"))
    return field is not None and bool(resource.get(field))


def wanted(resource: dict[str, Any] | None, previous: dict[str, Any] | None) -> bool:
    """Whether a write changes what is embedded: the new version or the one before has text."""
    return get_settings().embeddings != "off" and (has_text(resource) or has_text(previous))


def prose(resource: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The strings of `resource` worth embedding, in order, and the attachments whose content may add more."""
    texts: list[Any] = []
    attachments: list[Any] = []
    resource_type = resource.get("resourceType")
    if resource_type == "Communication":
        for payload in _dicts(resource.get("payload")):
            texts.append(payload.get("contentString"))
            attachments.append(payload.get("contentAttachment"))
    elif resource_type == "DocumentReference":
        texts.append(resource.get("description"))
        attachments += [content.get("attachment") for content in _dicts(resource.get("content"))]
    elif resource_type == "QuestionnaireResponse":
        texts += _answers(resource.get("item"))
    narrative = resource.get("text")
    if isinstance(narrative, dict) and isinstance(narrative.get("div"), str):
        texts.append(narrative_text(narrative["div"]))
    return ([text for text in texts if isinstance(text, str) and text.strip()],
            [attachment for attachment in attachments if isinstance(attachment, dict)])


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _answers(items: Any) -> list[str]:
    """"Question: answer" for each answered item, nested items included."""
    out = []
    for item in _dicts(items):
        answers = _dicts(item.get("answer"))
        values = [value for value in map(_answer_value, answers) if value]
        question = item.get("text") or item.get("linkId")
        if values:
            out.append(f"{question}: {', '.join(values)}" if question else ", ".join(values))
        for answer in answers:
            out += _answers(answer.get("item"))
        out += _answers(item.get("item"))
    return out


def _answer_value(answer: dict[str, Any]) -> str | None:
    for key, value in answer.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, dict):  # Coding, Quantity, Reference, Attachment
            if "value" in value:
                return f"{value['value']} {value.get('unit') or ''}".strip()
            shown = value.get("display") or value.get("code") or value.get("title")
            return str(shown) if shown is not None else None
        return "yes" if value is True else "no" if value is False else str(value)
    return None
