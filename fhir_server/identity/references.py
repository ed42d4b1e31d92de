"""Finding and rewriting the references of a resource: anywhere in it, contained resources and extensions too."""

from collections.abc import Iterator
from typing import Any

from fhir_server.search.values import reference_target

Path = tuple[str | int, ...]


def references(node: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Reference-like object (a dict with a string `reference`) inside `node`, with its JSON path."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from references(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from references(value, (*path, index))


def local_target(reference: str, base_url: str | None) -> tuple[str, str] | None:
    """The (type, id) a reference names on this server: `Type/id[/_history/n]`, or the same below `base_url`."""
    if base_url and reference.startswith(base_url.rstrip("/") + "/"):
        reference = reference[len(base_url.rstrip("/")) + 1:]
    target = reference_target(reference)
    if target is None or target.target_url is not None or target.target_type is None or target.target_id is None:
        return None
    return target.target_type, target.target_id


def at_path(node: Any, path: Path) -> Any:
    """The value at `path` inside `node`, or None if the path no longer exists."""
    for step in path:
        if isinstance(node, dict) and isinstance(step, str):
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            return None
    return node


def retarget(resource: dict[str, Any], source: tuple[str, str], target: tuple[str, str],
             base_url: str | None) -> int:
    """Point every reference to `source` at `target` in place (keeping an absolute URL absolute; a version
    pinned on the source is dropped, as it means nothing for the target). Returns how many were changed."""
    changed = 0
    local_prefix = base_url.rstrip("/") + "/" if base_url else None
    for _, reference in references(resource):
        value = reference["reference"]
        if local_target(value, base_url) == source:
            absolute = local_prefix is not None and value.startswith(local_prefix)
            reference["reference"] = (local_prefix if absolute else "") + f"{target[0]}/{target[1]}"
            changed += 1
    return changed


def restore_references(prior: dict[str, Any], current: dict[str, Any], source_id: str, target_id: str,
                       base_url: str | None) -> int:
    """Undo a merge's rewrite in `current`: put back the references to Patient/`source_id` that `prior` had,
    where they now name Patient/`target_id` (what changed elsewhere since is kept). Returns how many."""
    restored = 0
    for path, reference in references(prior):
        if local_target(reference["reference"], base_url) != ("Patient", source_id):
            continue
        now = at_path(current, path)
        if isinstance(now, dict) and local_target(now.get("reference") or "", base_url) == ("Patient", target_id):
            now["reference"] = reference["reference"]
            restored += 1
    return restored
