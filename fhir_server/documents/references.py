"""How resources point at stored bytes: the content-hash extension on `Binary.data` and on Attachments.

R4 gives Binary no place for a hash, and Attachment.hash is SHA-1 (base64). The SHA-256 (hex) that names the
object goes in an extension: on the `data` element of a Binary (`_data`, whose value is then left out), and
on each Attachment the server resolves to a stored Binary (beside the SHA-1 it puts in Attachment.hash).
"""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.resource_types import ID_PATTERN
from fhir_server.storage import repository

CONTENT_SHA256 = "urn:fhir-server:StructureDefinition/content-sha256"


def _extension_value(element: dict[str, Any] | None) -> str | None:
    for extension in (element or {}).get("extension") or ():
        if isinstance(extension, dict) and extension.get("url") == CONTENT_SHA256:
            return extension.get("valueString")
    return None


def _with_extension(element: dict[str, Any], sha256: str) -> dict[str, Any]:
    others = [extension for extension in element.get("extension") or () if extension.get("url") != CONTENT_SHA256]
    return {**element, "extension": [*others, {"url": CONTENT_SHA256, "valueString": sha256}]}


def content_hash(binary: dict[str, Any]) -> str | None:
    """The SHA-256 of the object holding a Binary's bytes, None for a Binary without content."""
    return _extension_value(binary.get("_data"))


def set_content_hash(binary: dict[str, Any], sha256: str) -> None:
    """Point a Binary at its object; its `data` is no longer stored."""
    binary.pop("data", None)
    binary["_data"] = _with_extension(binary.get("_data") or {}, sha256)


def set_attachment_hash(attachment: dict[str, Any], sha256: str) -> None:
    attachment["extension"] = _with_extension(attachment, sha256)["extension"]


def binary_target(url: Any, base_url: str | None) -> tuple[str, int | None] | None:
    """(id, version or None) of a `Binary/id[/_history/n]` URL, relative or below this server's base."""
    if not isinstance(url, str):
        return None
    if base_url and url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    parts = url.split("/")
    if len(parts) not in (2, 4) or parts[0] != "Binary" or not ID_PATTERN.fullmatch(parts[1]):
        return None
    if len(parts) == 4:
        if parts[2] != "_history" or not parts[3].isdigit():
            return None
        return parts[1], int(parts[3])
    return parts[1], None


async def attachment_binary(conn: AsyncConnection, attachment: Any, base_url: str | None
                            ) -> repository.StoredResource | None:
    """The live Binary version an Attachment's url names, if it has stored content."""
    target = binary_target(attachment.get("url") if isinstance(attachment, dict) else None, base_url)
    if target is None:
        return None
    fhir_id, version = target
    stored = await (repository.vread(conn, "Binary", fhir_id, version) if version
                    else repository.read(conn, "Binary", fhir_id))
    if stored is None or stored.deleted or content_hash(stored.json()) is None:
        return None
    return stored
