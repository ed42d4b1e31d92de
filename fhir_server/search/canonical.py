"""Canonical references (`url` or `url|version`): the types they name, and the SQL that follows them both ways."""

from collections.abc import Iterable

from fhir_server.search.parameters import search_parameters

# A canonical reference is indexed as its text (search_reference.target_url, migration 0016 indexes it); the
# resource it names is found by its `url` row (search_uri) and, when the reference pins one, its `version` row
# (search_token). Without a version it names every version held, as chains have always read it.


def canonical_types(candidates: Iterable[str] | None = None) -> list[str]:
    """The types among `candidates` (every type when None) that canonical references name: those with a `url`
    and a `version` search parameter (a Device's or Subscription's `url` is an address, not a canonical)."""
    by_type = search_parameters().by_type
    names = by_type if candidates is None else candidates
    return [name for name in names if (parameters := by_type.get(name)) is not None
            and getattr(parameters.get("url"), "type", None) == "uri"
            and getattr(parameters.get("version"), "type", None) == "token"]


def texts(target: str) -> str:
    """SQL: the canonical references that name the resource of `url` row `target` (search_uri), as written:
    `url` and `url|version`. The version is looked up for this one resource, never for all of them."""
    return (f"ARRAY[{target}.value, {target}.value || '|' || (SELECT {target}_v.code FROM search_token {target}_v "
            f"WHERE {target}_v.resource_id = {target}.resource_id AND {target}_v.resource_type = {target}.resource_type "
            f"AND {target}_v.param = 'version' LIMIT 1)]")


def named_by(reference: str, target: str) -> str:
    """SQL: the `url` row `target` (search_uri) is of a resource that the canonical reference row `reference`
    (search_reference) names; with `target.resource_type` given, search_uri_value finds it."""
    return (f"{target}.param = 'url' AND {target}.value = split_part({reference}.target_url, '|', 1) "
            f"AND {reference}.target_url = ANY({texts(target)})")
