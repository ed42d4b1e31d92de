"""The operations served: each OperationDefinition (resources/operations/) with the handler that implements it.

The router checks every invocation against the definition (level, resource type, GET or POST), so a handler
only ever runs where its definition allows; the CapabilityStatement lists the same definitions.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from psycopg import AsyncConnection

from fhir_server.operations import basic_render, communication_request_send_bulk
from fhir_server.operations import (document_download, patient_everything, patient_match, patient_merge,
                                    patient_unmerge, reindex, semantic_search, validate)
from fhir_server.operations.definitions import OperationDefinition
from fhir_server.request import FHIRRequest, Outcome


Handler = Callable[[AsyncConnection, FHIRRequest], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Operation:
    definition: OperationDefinition
    handler: Handler


OPERATIONS: dict[str, Operation] = {operation.definition.code: operation for operation in (
    Operation(validate.DEFINITION, validate.validate),
    Operation(reindex.DEFINITION, reindex.reindex),
    Operation(patient_match.DEFINITION, patient_match.match),
    Operation(patient_merge.DEFINITION, patient_merge.merge),
    Operation(patient_unmerge.DEFINITION, patient_unmerge.unmerge),
    Operation(patient_everything.DEFINITION, patient_everything.everything),
    Operation(basic_render.DEFINITION, basic_render.render),
    Operation(communication_request_send_bulk.DEFINITION, communication_request_send_bulk.send_bulk),
    Operation(document_download.DEFINITION, document_download.download),
    Operation(semantic_search.DEFINITION, semantic_search.semantic_search),
)}
