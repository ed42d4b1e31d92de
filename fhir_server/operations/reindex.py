"""$reindex (system and type level, POST): stored SearchParameters join the registry, index rows are recomputed.

Runs in the request for now (a worker takes it over later). The registry is per server process: with
several worker processes, each one loads the stored SearchParameters at start-up.
"""

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import Issue, operation_outcome
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search.reindex import load_stored_search_parameters, reindex as reindex_resources

DEFINITION = operation_definition("reindex")


async def reindex(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    from fhir_server.interactions.capabilities import capability_statement_bytes  # it imports this module

    custom = await load_stored_search_parameters(conn)
    capability_statement_bytes.cache_clear()  # the searchable parameters may have changed
    count = await reindex_resources(conn, req.resource_type, req.base_url)
    scope = f"{req.resource_type} resources" if req.resource_type else "resources"
    message = f"Reindexed {count} {scope}; {custom} stored SearchParameter(s) active"
    return Outcome(200, orjson.dumps(operation_outcome([Issue("informational", message, severity="information")])))
