"""history: every version of an instance, a type or the whole system, newest first, keyset-paged."""

import base64
from datetime import datetime
from urllib.parse import urlencode

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search.engine import filter_condition
from fhir_server.settings import get_settings
from fhir_server.storage import repository
from fhir_server.storage.repository import instant

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def _instant_param(req: FHIRRequest, name: str) -> datetime | None:
    values = req.query_values(name)
    if not values:
        return None
    text = values[-1]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FHIRError.of(400, "invalid", f"{name} must be an instant like 2024-01-31T10:00:00Z, got '{text}'",
                           name) from None
    if moment.tzinfo is None:
        raise FHIRError.of(400, "invalid", f"{name} needs a time zone, got '{text}'", name)
    return moment


def _count(req: FHIRRequest) -> int:
    settings = get_settings()
    values = req.query_values("_count")
    if not values:
        return settings.default_page_size
    if not values[-1].isdigit():
        raise FHIRError.of(400, "invalid", f"_count must be a non-negative integer, got '{values[-1]}'", "_count")
    return min(int(values[-1]), settings.max_page_size)


def _cursor(req: FHIRRequest) -> tuple[datetime, int, int] | None:
    values = req.query_values("_cursor")
    if not values:
        return None
    try:
        moment, pk, version = orjson.loads(base64.urlsafe_b64decode(values[-1].encode()))
        return datetime.fromisoformat(moment), int(pk), int(version)
    except (ValueError, TypeError):
        raise FHIRError.of(400, "invalid", "The _cursor paging token is malformed", "_cursor") from None


def _encode_cursor(entry: repository.HistoryEntry) -> str:
    version = entry.version
    raw = orjson.dumps([version.last_updated.isoformat(), version.pk, version.version_id])
    return base64.urlsafe_b64encode(raw).decode()


def _entry(base_url: str, item: repository.HistoryEntry) -> dict:
    version = item.version
    path = f"{version.resource_type}/{version.fhir_id}"
    entry: dict = {"fullUrl": f"{base_url}/{path}"}
    if version.content is not None:
        entry["resource"] = orjson.Fragment(version.content)
    entry["request"] = {"method": item.method, "url": version.resource_type if item.method == "POST" else path}
    entry["response"] = {"status": _STATUS[item.method], "etag": version.etag,
                         "lastModified": instant(version.last_updated)}
    return entry


def _visible(req: FHIRRequest) -> tuple[str, list] | None:
    """Under a token confined to a compartment or to v2 scope filters: the resources whose history it may
    read, those it could read now (the same rule as search and read, so paging counts only what it sees)."""
    restriction = req.restriction
    if restriction is None or (restriction.compartment is None and not restriction.filters):
        return None
    condition = filter_condition(req.resource_type, [], list(restriction.filters), True, req.base_url,
                                 restriction).condition
    return condition.where(), condition.args


async def history(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    if req.id is not None and await repository.read(conn, req.resource_type, req.id) is None:
        raise FHIRError.of(404, "not-found", f"{req.resource_type}/{req.id} is not known")
    count = _count(req)
    items = await repository.history(
        conn, resource_type=req.resource_type, fhir_id=req.id, since=_instant_param(req, "_since"),
        at=_instant_param(req, "_at"), count=count + 1, before=_cursor(req), visible=_visible(req),
        types=req.restriction.readable_types if req.restriction is not None and req.resource_type is None else None,
    ) if count else []
    more = len(items) > count
    path = "/".join(part for part in (req.resource_type, req.id) if part)
    url = f"{req.base_url}/{path}/_history" if path else f"{req.base_url}/_history"
    kept = [(name, value) for name, value in req.query if name in ("_since", "_at", "_count")]
    links = [{"relation": "self", "url": url + ("?" + urlencode(req.query) if req.query else "")}]
    if more:
        items = items[:count]
        next_query = urlencode([*kept, ("_cursor", _encode_cursor(items[-1]))])
        links.append({"relation": "next", "url": f"{url}?{next_query}"})
    bundle = {"resourceType": "Bundle", "type": "history", "link": links,
              "entry": [_entry(req.base_url, item) for item in items]}
    return Outcome(200, orjson.dumps(bundle))
