"""Content types: the allowed list, and whether the first bytes (the magic number) agree with the declared type."""

import codecs
from collections.abc import Callable

from fhir_server.errors import FHIRError

SNIFF_BYTES = 4096
"""How many leading bytes the checks look at."""

HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_TEXT_CONTROLS = frozenset(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D, 0x1B}


def _iso_brand(head: bytes) -> bytes | None:
    """The major brand of an ISO base media file (MP4, HEIF): `....ftypXXXX`."""
    return head[8:12] if head[4:8] == b"ftyp" else None


def _is_text(head: bytes) -> bool:
    """UTF-8 (or ASCII) without NULs or other binary control bytes; a character cut at the sample's end is fine."""
    if any(byte in _TEXT_CONTROLS for byte in head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    # A PDF may have up to 1 KB of junk before its header (ISO 32000-1, 7.5.2 as read by every viewer).
    "application/pdf": lambda head: b"%PDF-" in head[:1024],
    "image/jpeg": lambda head: head.startswith(b"\xff\xd8\xff"),
    "image/png": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/heic": lambda head: _iso_brand(head) in HEIF_BRANDS,
    "image/tiff": lambda head: head.startswith((b"II*\x00", b"MM\x00*")),
    "text/plain": _is_text,
    # MP3: an ID3v2 tag, or an MPEG audio frame sync (11 set bits) with layer bits not 00.
    "audio/mpeg": lambda head: head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF
                                                           and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0),
    "audio/ogg": lambda head: head.startswith(b"OggS"),
    "video/mp4": lambda head: _iso_brand(head) is not None and _iso_brand(head) not in HEIF_BRANDS,
}
"""The signature check of each type this server knows; a type allowed by settings but not here is taken on
its Content-Type alone."""


def media_type(content_type: str) -> str:
    """`application/pdf` of `Application/PDF; name=x.pdf`."""
    return content_type.split(";")[0].strip().lower()


def require_allowed(content_type: str, allowed: list[str]) -> str:
    """The media type of `content_type`, or 415 when the server does not take that type."""
    media = media_type(content_type)
    if media not in allowed:
        raise FHIRError.of(415, "not-supported", f"Documents of type {media or '(none)'} are not accepted; "
                                                 f"allowed: {', '.join(allowed)}")
    return media


def looks_like(head: bytes) -> str | None:
    """The known type the bytes start like, for error messages."""
    return next((media for media, matches in SIGNATURES.items() if media != "text/plain" and matches(head)),
                "text/plain" if _is_text(head) and head else None)


def require_signature(media: str, head: bytes) -> None:
    """415 unless the leading bytes carry the signature of `media`."""
    matches = SIGNATURES.get(media)
    if matches is not None and not matches(head):
        seen = looks_like(head)
        raise FHIRError.of(415, "invalid", f"The content is declared {media} but its bytes are not "
                                           + (f"(they look like {seen})" if seen else "of that type"))
