"""search: GET Type?params, POST Type/_search, system-level and compartment search, answered by the search engine."""

from psycopg import AsyncConnection

from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search.engine import Compartment, search as run_search


async def search(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    strict = req.prefer("handling") == "strict"
    compartment = Compartment(req.compartment_type, req.id) if req.compartment_type and req.id else None
    body = await run_search(conn, base_url=req.base_url, resource_type=req.resource_type, query=req.query,
                            strict=strict, compartment=compartment, restriction=req.restriction)
    return Outcome(200, body)
