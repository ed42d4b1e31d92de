"""The embedded default object store: one file per object under the data directory, written atomically."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from fhir_server.documents.store import CHUNK_BYTES


class FilesystemStore:
    """Objects at `root`/sha256/ab/abcdef...; a write goes to a temporary file that is renamed into place, so
    a reader never sees half an object."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def put(self, sha256: str, file: BinaryIO, content_type: str) -> None:
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(descriptor, "wb") as out:
                shutil.copyfileobj(file, out, CHUNK_BYTES)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def open(self, sha256: str) -> Iterator[bytes]:
        file = self._path(sha256).open("rb")  # raises FileNotFoundError before the first chunk is asked for
        return self._chunks(file)

    @staticmethod
    def _chunks(file: BinaryIO) -> Iterator[bytes]:
        with file:
            while chunk := file.read(CHUNK_BYTES):
                yield chunk

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def list(self) -> Iterator[tuple[str, datetime]]:
        for path in (self.root / "sha256").glob("??/*"):
            if not path.name.startswith(".") and path.is_file():
                yield path.name, datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)

    def presigned_url(self, sha256: str, content_type: str, filename: str | None, seconds: int) -> None:
        return None
