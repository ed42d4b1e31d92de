"""capabilities: the CapabilityStatement, generated from the registered types, parameters and operations."""

from functools import lru_cache
from typing import Any

import orjson

from fhir_server import FHIR_VERSION, __version__
from fhir_server.operations import basic_render, communication_request_send_bulk
from fhir_server.operations import (document_download, patient_everything, patient_match, patient_merge,
                                    patient_unmerge, reindex, semantic_search, validate)
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.resource_types import resource_types
from fhir_server.search.parameters import parameters_for
from fhir_server.settings import get_settings

RELEASE_DATE = "2026-11-23"
# An operation module with RESOURCE_TYPES is offered on those types only.
OPERATIONS = (validate, reindex, patient_match, patient_merge, patient_unmerge, patient_everything, basic_render,
              communication_request_send_bulk,
              document_download, semantic_search)
# Operations also offered at the system level ([base]/$name).
SYSTEM_OPERATIONS = (semantic_search,)
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
# Served from the resource table itself rather than from the parameter data.
COMMON_SEARCH_PARAMETERS = (
    {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
    {"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
     "type": "date"},
)


def _resource(resource_type: str) -> dict[str, Any]:
    settings = get_settings()
    searchable = sorted(parameters_for(resource_type).values(), key=lambda parameter: parameter.code)
    return {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "multiple" if settings.allow_multiple_delete else "single",
        "referencePolicy": ["literal", "logical"],
        "searchParam": [*COMMON_SEARCH_PARAMETERS, *(
            {"name": parameter.code, "definition": parameter.url, "type": parameter.type}
            for parameter in searchable if parameter.code not in ("_id", "_lastUpdated")
        )],
        "operation": [{"name": operation.NAME, "definition": operation.DEFINITION} for operation in OPERATIONS
                      if resource_type in getattr(operation, "RESOURCE_TYPES", (resource_type,))],
    }


def capability_statement() -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "fhir-server: FHIR R4 on PostgreSQL"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": [_resource(resource_type) for resource_type in sorted(resource_types())],
            "interaction": [{"code": code} for code in ("transaction", "batch", "search-system", "history-system")],
            "searchParam": list(COMMON_SEARCH_PARAMETERS),
            "operation": [{"name": operation.NAME, "definition": operation.DEFINITION}
                          for operation in SYSTEM_OPERATIONS],
        }],
    }


@lru_cache(maxsize=1)
def capability_statement_bytes() -> bytes:
    return orjson.dumps(capability_statement())


async def capabilities(conn: object, req: FHIRRequest) -> Outcome:
    return Outcome(200, capability_statement_bytes())
