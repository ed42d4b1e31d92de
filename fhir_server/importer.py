"""Bulk loading from files: Bundles (.json) and NDJSON, through the same interactions as the HTTP API."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import typer
from psycopg import AsyncConnection

from fhir_server import json_numbers
from fhir_server.errors import FHIRError
from fhir_server.interactions import create, transaction, update
from fhir_server.request import FHIRRequest
from fhir_server.storage import tenants
from fhir_server.storage.database import create_pool

BASE_URL = "urn:fhir-server:import"


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _items(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON or the error text) for each resource or Bundle in `path`."""
    if path.suffix == ".ndjson":
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield f"{path}:{number}", json_numbers.loads(line)
                    except orjson.JSONDecodeError as error:
                        yield f"{path}:{number}", f"not valid JSON: {error}"
        return
    try:
        yield str(path), json_numbers.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as error:
        yield str(path), f"cannot read: {error}"


async def _store(conn: AsyncConnection, resource: dict[str, Any]) -> int:
    """Create or update one resource; returns the HTTP status of the interaction."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    req = FHIRRequest(method="POST", base_url=BASE_URL, resource_type=resource_type, body=resource)
    if not isinstance(resource_type, str):
        raise FHIRError.of(400, "invalid", "not a FHIR resource (no resourceType)")
    if resource.get("id"):
        req.method, req.id = "PUT", resource["id"]
        return (await update.update(conn, req)).status
    return (await create.create(conn, req)).status


async def _import_one(conn: AsyncConnection, document: Any, where: str, summary: ImportSummary) -> None:
    if isinstance(document, dict) and document.get("resourceType") == "Bundle" \
            and document.get("type") in ("transaction", "batch"):
        req = FHIRRequest(method="POST", base_url=BASE_URL, body=document)
        outcome = await transaction.process(conn, req)
        for index, entry in enumerate(orjson.loads(outcome.body)["entry"]):
            status = int(entry["response"]["status"].split()[0])
            if status == 201:
                summary.created += 1
            elif status < 300:
                summary.updated += 1
            else:
                issues = entry["response"].get("outcome", {}).get("issue", [])
                summary.failures.append((f"{where} entry {index}", "; ".join(i["diagnostics"] for i in issues)))
        return
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        for index, entry in enumerate(document.get("entry") or []):
            await _import_one(conn, (entry or {}).get("resource"), f"{where} entry {index}", summary)
        return
    try:
        async with conn.transaction():
            status = await _store(conn, document)
    except FHIRError as error:
        summary.failures.append((where, "; ".join(issue.diagnostics for issue in error.issues)))
        return
    if status == 201:
        summary.created += 1
    else:
        summary.updated += 1


async def import_files(database_url: str, paths: list[Path], tenant: str | None = None) -> ImportSummary:
    """Import into the default schema, or into `tenant` (ValueError if there is no such tenant)."""
    from fhir_server.search.parameters import search_parameters

    search_parameters()
    summary = ImportSummary()
    pool = create_pool(database_url, 2, "none" if tenant is None else "url")
    await pool.open(wait=True)
    try:
        if tenant is not None:
            try:
                tenants.current.set(await pool.resolve(tenant))
            except tenants.UnknownTenant:
                raise ValueError(f"no tenant {tenant!r}") from None
        async with pool.connection() as conn:
            with typer.progressbar(paths, label="importing", file=None) as progress:
                for path in progress:
                    for where, document in _items(path):
                        if isinstance(document, str):
                            summary.failures.append((where, document))
                            continue
                        try:
                            async with conn.transaction():
                                await _import_one(conn, document, where, summary)
                        except FHIRError as error:
                            summary.failures.append((where, "; ".join(i.diagnostics for i in error.issues)))
    finally:
        await pool.close()
    return summary
