"""The object store interface, and the one configured: S3 when FHIR_S3_BUCKET is set, else the filesystem."""

from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO, Protocol

from fhir_server.settings import Settings
from fhir_server.storage import tenants

CHUNK_BYTES = 1024 * 1024


class ObjectStore(Protocol):
    """Immutable objects named by the SHA-256 (hex) of their bytes. Every method blocks: call it in a thread."""

    def exists(self, sha256: str) -> bool: ...

    def put(self, sha256: str, file: BinaryIO, content_type: str) -> None:
        """Store the bytes of `file` (read from its current position) under `sha256`."""

    def open(self, sha256: str) -> Iterator[bytes]:
        """The bytes in chunks; FileNotFoundError if there is no such object."""

    def delete(self, sha256: str) -> None:
        """Remove the object; nothing happens if it is absent."""

    def list(self) -> Iterator[tuple[str, datetime]]:
        """Every stored object as (sha256, when it was written)."""

    def presigned_url(self, sha256: str, content_type: str, filename: str | None, seconds: int) -> str | None:
        """A URL that serves the bytes without credentials for `seconds`; None when the store cannot make one."""


_stores: dict[tuple, ObjectStore] = {}


def object_store(settings: Settings) -> ObjectStore:
    """The store the settings name, made once per configuration (boto3 clients are thread-safe and costly).

    Each tenant has its own part of the bucket or directory (named by its schema, never re-used), so the
    same bytes uploaded by two tenants are two objects, and one tenant's garbage collection or downloads
    cannot touch another's.
    """
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    tenant = tenants.current.get()
    area = tenant.schema if tenant is not None else None
    key = (settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, secret,
           settings.document_dir or settings.data_dir / "documents", area)
    store = _stores.get(key)
    if store is None:
        if settings.s3_bucket:
            from fhir_server.documents.s3 import S3Store

            store = S3Store(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region,
                            settings.s3_access_key_id, secret, f"{area}/" if area else "")
        else:
            from fhir_server.documents.filesystem import FilesystemStore

            root = key[-2]
            store = FilesystemStore(root / area if area else root)
        _stores[key] = store
    return store
