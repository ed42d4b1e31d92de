"""Receiving bytes (streamed, hashed, bounded) and the content-type signatures, without a server."""

import hashlib
import tracemalloc

import pytest

from fhir_server.documents.content import receive
from fhir_server.documents.mime import looks_like, require_signature
from fhir_server.errors import FHIRError
from tests.documents.samples import PDF, PNG, TEXT


async def test_a_large_body_is_spooled_not_held() -> None:
    chunk = PDF + bytes(64 * 1024 - len(PDF))
    expected = hashlib.sha256()

    async def body():
        for _ in range(320):  # 20 MiB
            expected.update(chunk)
            yield chunk

    tracemalloc.start()
    content = await receive(body(), 50 * 1024 * 1024, lambda head: require_signature("application/pdf", head))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    try:
        assert content.size == 320 * len(chunk)
        assert content.sha256 == expected.hexdigest()
        # The spool keeps at most 1 MiB in memory; the bound leaves room for other threads of the test process.
        assert peak < 10 * 1024 * 1024, peak
    finally:
        content.close()


async def test_a_lie_is_refused_after_the_first_bytes() -> None:
    read = 0

    async def body():
        nonlocal read
        for _ in range(100):
            read += 1
            yield PNG + bytes(8192)

    with pytest.raises(FHIRError) as refused:
        await receive(body(), 50 * 1024 * 1024, lambda head: require_signature("application/pdf", head))
    assert refused.value.status == 415
    assert read == 1


@pytest.mark.parametrize(("media", "head"), [
    ("application/pdf", PDF), ("application/pdf", b"\r\n" * 10 + PDF), ("image/png", PNG),
    ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF"), ("image/tiff", b"II*\x00\x08\x00"),
    ("image/tiff", b"MM\x00*\x00\x00"), ("image/heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"),
    ("video/mp4", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00"), ("audio/mpeg", b"ID3\x04\x00"),
    ("audio/mpeg", b"\xff\xfb\x90\x64"), ("audio/ogg", b"OggS\x00\x02"), ("text/plain", TEXT),
    ("text/plain", TEXT[:-3] + "ü".encode()[:1]),  # a character cut at the end of the sample
])
def test_signatures_accept_their_type(media: str, head: bytes) -> None:
    require_signature(media, head)


@pytest.mark.parametrize(("media", "head"), [
    ("application/pdf", PNG), ("image/png", PDF), ("image/heic", b"\x00\x00\x00\x20ftypisom"),
    ("video/mp4", b"\x00\x00\x00\x18ftypheic"), ("text/plain", b"MZ\x90\x00\x03"), ("text/plain", b"\xff\xfe\xfa"),
    ("image/jpeg", b""), ("audio/ogg", b"fLaC"),
])
def test_signatures_refuse_other_bytes(media: str, head: bytes) -> None:
    with pytest.raises(FHIRError) as refused:
        require_signature(media, head)
    assert refused.value.status == 415


def test_types_without_a_signature_are_taken_on_their_header() -> None:
    require_signature("application/dicom", b"anything")
    assert looks_like(PNG) == "image/png"
