"""read and vread: the current or a given version of one resource, with conditional-read support."""

from datetime import timezone
from email.utils import parsedate_to_datetime

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.request import FHIRRequest, Outcome, parse_version_tag, resource_outcome
from fhir_server.storage import repository


def _gone(stored: repository.StoredResource) -> FHIRError:
    error = FHIRError.of(410, "deleted", f"{stored.resource_type}/{stored.fhir_id} was deleted "
                                         f"(version {stored.version_id})")
    error.headers.update(Outcome(410, etag=stored.etag, last_modified=stored.last_updated).response_headers())
    return error


def _not_modified(req: FHIRRequest, stored: repository.StoredResource) -> bool:
    if_none_match = req.header("if-none-match")
    if if_none_match is not None:
        return if_none_match.strip() == "*" or parse_version_tag(if_none_match, "If-None-Match") == stored.version_id
    if_modified_since = req.header("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return stored.last_updated.replace(microsecond=0) <= since
    return False


async def read(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    stored = await repository.read(conn, req.resource_type, req.id)
    if stored is None:
        raise FHIRError.of(404, "not-found", f"{req.resource_type}/{req.id} is not known")
    if stored.deleted:
        raise _gone(stored)
    if _not_modified(req, stored):
        return Outcome(304, etag=stored.etag, last_modified=stored.last_updated)
    return resource_outcome(200, stored, req.base_url)


async def vread(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    version = int(req.version_id) if req.version_id and req.version_id.isdigit() else None
    stored = await repository.vread(conn, req.resource_type, req.id, version) if version else None
    if stored is None:
        raise FHIRError.of(404, "not-found", f"{req.resource_type}/{req.id} has no version '{req.version_id}'")
    if stored.deleted:
        raise _gone(stored)
    return resource_outcome(200, stored, req.base_url)


