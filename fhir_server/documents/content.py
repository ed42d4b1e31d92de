"""Receiving document bytes: spooled to a temporary file while SHA-256 and SHA-1 are computed, within a size limit."""

import base64
import hashlib
import io
import tempfile
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from fhir_server.documents.mime import SNIFF_BYTES
from fhir_server.errors import FHIRError

SPOOL_IN_MEMORY_BYTES = 1024 * 1024
"""Bodies up to this size stay in memory; larger ones roll over to a temporary file."""


@dataclass(slots=True)
class Content:
    """Bytes received and where they wait: `file` is positioned at the start."""

    file: BinaryIO
    sha256: str
    """Hex."""
    sha1: bytes
    size: int
    head: bytes = field(repr=False)
    """The first SNIFF_BYTES bytes, for the content-type check."""

    @property
    def sha1_base64(self) -> str:
        """The value of R4 Attachment.hash (base64 of the SHA-1)."""
        return base64.b64encode(self.sha1).decode()

    def close(self) -> None:
        self.file.close()


def too_large(limit: int) -> FHIRError:
    return FHIRError.of(413, "too-costly", f"Documents may have at most {limit} bytes")


class _Receiver:
    def __init__(self, limit: int, check_head: Callable[[bytes], None], file: BinaryIO | None) -> None:
        self.limit, self.check_head, self.file = limit, check_head, file
        self.sha256, self.sha1 = hashlib.sha256(), hashlib.sha1()
        self.size = 0
        self.head = b""
        self.head_checked = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise too_large(self.limit)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[:SNIFF_BYTES - len(self.head)]
            if len(self.head) == SNIFF_BYTES:
                self._check_head()  # a lie about the type is refused before the rest is read
        self.sha256.update(chunk)
        self.sha1.update(chunk)
        if self.file is not None:
            self.file.write(chunk)

    def _check_head(self) -> None:
        if not self.head_checked:
            self.head_checked = True
            self.check_head(self.head)

    def finish(self) -> Content:
        self._check_head()
        self.file.seek(0)
        return Content(self.file, self.sha256.hexdigest(), self.sha1.digest(), self.size, self.head)


async def receive(chunks: AsyncIterable[bytes], limit: int, check_head: Callable[[bytes], None]) -> Content:
    """Spool a streamed body; 413 as soon as it passes `limit`, whatever `check_head` raises once the
    first bytes are in. Only the in-memory part of the spool (at most SPOOL_IN_MEMORY_BYTES) is held."""
    receiver = _Receiver(limit, check_head, tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY_BYTES))
    try:
        async for chunk in chunks:
            receiver.write(chunk)
        return receiver.finish()
    except BaseException:
        receiver.file.close()
        raise


def from_bytes(data: bytes, limit: int, check_head: Callable[[bytes], None]) -> Content:
    """The same for bytes already in memory (Binary.data of a JSON body)."""
    receiver = _Receiver(limit, check_head, None)
    receiver.write(data)
    receiver.file = io.BytesIO(data)
    return receiver.finish()
