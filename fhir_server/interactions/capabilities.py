"""capabilities: the CapabilityStatement, generated from the registered types, parameters and operations."""

from functools import lru_cache
from typing import Any

import orjson

from fhir_server import FHIR_VERSION, __version__
from fhir_server.auth.endpoints import endpoints_of
from fhir_server.auth.scopes import AUDIT_TYPES
from fhir_server.operations.definitions import OperationDefinition
from fhir_server.operations.registry import OPERATIONS
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.resource_types import resource_types
from fhir_server.search.parameters import parameters_for
from fhir_server.settings import get_settings

RELEASE_DATE = "2026-11-23"
TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
READ_INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
# Served from the resource table itself rather than from the parameter data.
COMMON_SEARCH_PARAMETERS = (
    {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
    {"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
     "type": "date"},
)


def _definitions() -> list[OperationDefinition]:
    return [operation.definition for operation in OPERATIONS.values()]


def _resource(resource_type: str) -> dict[str, Any]:
    settings = get_settings()
    searchable = sorted(parameters_for(resource_type).values(), key=lambda parameter: parameter.code)
    writable = resource_type not in AUDIT_TYPES  # AuditEvents are written by the server only
    return {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in (TYPE_INTERACTIONS if writable else READ_INTERACTIONS)],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "full-support",
        "conditionalUpdate": writable,
        "conditionalDelete": ("multiple" if settings.allow_multiple_delete else "single") if writable
        else "not-supported",
        "referencePolicy": ["literal", "logical"],
        "searchParam": [*COMMON_SEARCH_PARAMETERS, *(
            {"name": parameter.code, "definition": parameter.url, "type": parameter.type}
            for parameter in searchable if parameter.code not in ("_id", "_lastUpdated")
        )],
        "operation": [{"name": definition.code, "definition": definition.url} for definition in _definitions()
                      if definition.levels - {"system"} and definition.offered_on(resource_type)],
    }


SMART_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
OAUTH_URIS = (("authorize", "authorize"), ("token", "token"), ("introspect", "introspect"), ("revoke", "revoke"))


def security(fhir_base: str) -> dict[str, Any]:
    """`rest.security` of a server that requires SMART tokens: the SMART service and the oauth-uris extension
    (SMART App Launch 1.0 §2.4; the same endpoints as .well-known/smart-configuration)."""
    urls = endpoints_of(fhir_base)
    return {
        "cors": bool(get_settings().cors_origins),
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
        "description": f"SMART App Launch and Backend Services; discovery at {fhir_base}/.well-known/"
                       "smart-configuration",
        "extension": [{"url": SMART_EXTENSION, "extension": [
            {"url": name, "valueUri": urls.at(path)} for name, path in OAUTH_URIS]}],
    }


def capability_statement(fhir_base: str | None = None) -> dict[str, Any]:
    """The CapabilityStatement; with the base URL a request reached, also `implementation.url` and (when
    tokens are required) `rest.security`. The committed capability-statement.json is the one without."""
    statement = _statement()
    if fhir_base is not None:
        statement["implementation"]["url"] = fhir_base
        if get_settings().auth == "smart":
            statement["rest"][0]["security"] = security(fhir_base)
    return statement


def _statement() -> dict[str, Any]:
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
            "operation": [{"name": definition.code, "definition": definition.url} for definition in _definitions()
                          if "system" in definition.levels],
        }],
    }


@lru_cache(maxsize=64)
def capability_statement_bytes(fhir_base: str, *depends_on: object) -> bytes:
    """The statement served at `fhir_base`; `depends_on` are the settings it reflects, part of the cache key so
    that a process whose settings change (tests build apps with other settings) is not answered from it."""
    return orjson.dumps(capability_statement(fhir_base))


async def capabilities(conn: object, req: FHIRRequest) -> Outcome:
    settings = get_settings()
    return Outcome(200, capability_statement_bytes(req.base_url, settings.auth, bool(settings.cors_origins),
                                                   settings.allow_multiple_delete))
