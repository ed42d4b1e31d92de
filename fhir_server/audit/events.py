"""AuditEvent resources in the shape of the IHE Basic Audit Log Patterns (BALP), one per interaction."""

import base64
import itertools
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import orjson

from fhir_server.request import FHIRRequest, Outcome
from fhir_server.storage import tenants

EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
              "display": "RESTful Operation"}
INTERACTION = "http://hl7.org/fhir/restful-interaction"
OPERATION = "urn:fhir-server:CodeSystem/operation"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
"""The type of a request refused for want of a valid token or of a scope (BALP's authorization-decision
pattern): still searchable by the interaction it attempted (`subtype`)."""
SECURITY_STATUSES = frozenset({401, 403})
SECRET_PARAMETERS = frozenset({"access_token", "client_secret", "client_assertion", "password", "refresh_token",
                               "code_verifier"})
"""Query parameters never copied into an AuditEvent, whatever a client puts in its URL."""
CLIENT_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
SERVER_ROLE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
USER_ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP",
                         "display": "information recipient"}]}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                "display": "Application Server"}]
SERVER = {"type": "Device", "identifier": {"system": "urn:fhir-server:device", "value": "fhir-server"},
          "display": "fhir-server"}
"""The server itself, as the agent of what it records and does (AuditEvent.source, Provenance.agent)."""
CLIENT_SYSTEM = "urn:fhir-server:client"
USER_SYSTEM = "urn:fhir-server:user"

ACTIONS = {"read": "R", "vread": "R", "history-instance": "R", "history": "R", "search": "E", "create": "C",
           "update": "U", "patch": "U", "delete": "D", "operation": "E", "transaction": "E", "batch": "E"}
# Top-level elements that name the patient a resource is about (Observation.subject, Encounter.subject,
# AllergyIntolerance.patient, Coverage.beneficiary, ...).
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")
PATIENT_PARAMETERS = frozenset({"patient", "subject"})


_ID_PREFIX = uuid4().hex[:20]
_ID_SEQUENCE = itertools.count()


def _event_id() -> str:
    """A UUID-shaped id unique to this event: 80 random bits drawn once per process (and per fork), then a
    counter. A fraction of the cost of uuid4 (a system call and an object), on every request."""
    p = _ID_PREFIX
    return f"{p[:8]}-{p[8:12]}-{p[12:16]}-{p[16:20]}-{next(_ID_SEQUENCE) % (1 << 48):012x}"


def _new_process() -> None:
    """Fresh random bits in a forked child, so that it never repeats its parent's ids."""
    global _ID_PREFIX, _ID_SEQUENCE
    _ID_PREFIX, _ID_SEQUENCE = uuid4().hex[:20], itertools.count()


os.register_at_fork(after_in_child=_new_process)


def outcome_code(status: int) -> str:
    """BALP: 0 success, 4 minor failure (the client's error), 8 serious failure (the server's, or an access
    refused for want of a valid token or scope, as in BALP's authorization-decision pattern)."""
    return "0" if status < 400 else "8" if status >= 500 or status in SECURITY_STATUSES else "4"


def _subtype(req: FHIRRequest, kind: str) -> list[dict[str, str]]:
    code = kind
    if kind == "history":
        code = "history-type" if req.resource_type else "history-system"
    elif kind == "search":
        code = "search-type" if req.resource_type else "search-system"
    subtype = [{"system": INTERACTION, "code": code}]
    if req.operation is not None:
        subtype.append({"system": OPERATION, "code": f"${req.operation}"})
    return subtype


def _agents(req: FHIRRequest, address: str | None) -> list[dict[str, Any]]:
    network = {"address": address, "type": "2"} if address else None
    token = req.principal.token if req.principal is not None else None
    client: dict[str, Any] = {"type": CLIENT_ROLE, "requestor": token is None or token.subject is None}
    if token is not None:
        client |= {"who": {"identifier": {"system": CLIENT_SYSTEM, "value": token.client_id}},
                   "name": token.client_id}
    if network:
        client["network"] = network
    agents = [client]
    if token is not None and token.subject is not None:
        who = {"reference": token.fhir_user} if token.fhir_user else \
            {"identifier": {"system": USER_SYSTEM, "value": token.subject}}
        agents.append({"type": USER_ROLE, "who": who, "altId": token.subject, "name": token.subject,
                       "requestor": True})
    agents.append({"type": SERVER_ROLE, "who": SERVER, "requestor": False,
                   "network": {"address": req.base_url, "type": "5"}})
    return agents


def resource_reference(req: FHIRRequest, outcome: Outcome | None) -> str | None:
    """`Type/id/_history/version` of the resource the interaction read or wrote (`Type/id` when the version
    is unknown, e.g. after a failure), None when it worked on no single resource."""
    if outcome is not None and outcome.location and req.operation is None:
        path = outcome.location.removeprefix(req.base_url + "/")
        if path.count("/") == 3:
            return path
    fhir_id = req.id
    if fhir_id is None and outcome is not None and outcome.body and req.resource_type and req.operation is None \
            and req.method in ("PUT", "PATCH") and outcome.status < 300:
        fhir_id = orjson.loads(outcome.body).get("id")  # a conditional update or patch
    if fhir_id is None or req.resource_type is None or req.compartment_type is not None:
        return None
    version = req.version_id
    if version is None and outcome is not None and outcome.etag and req.operation is None:
        version = outcome.etag.removeprefix("W/").strip('"')
    return f"{req.resource_type}/{fhir_id}" + (f"/_history/{version}" if version else "")


def _patient_of(resource: Any) -> str | None:
    if not isinstance(resource, dict):
        return None
    for element in PATIENT_ELEMENTS:
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference.split("/")[1]
    return None


def _patient(req: FHIRRequest, kind: str, query: list[tuple[str, str]], outcome: Outcome | None,
             what: str | None) -> str | None:
    """The patient the interaction concerned, where it is known without another query."""
    if req.resource_type == "Patient" and what is not None:
        return what.split("/")[1]
    if req.compartment_type == "Patient" and req.id:
        return req.id
    if req.principal is not None and req.principal.token.patient:
        return req.principal.token.patient
    for name, value in query:
        if name.partition(":")[0] in PATIENT_PARAMETERS and value:
            return value.removeprefix("Patient/") if "/" not in value.removeprefix("Patient/") else None
    if isinstance(req.body, dict):
        return _patient_of(req.body)
    if kind in ("read", "vread") and outcome is not None and outcome.body and outcome.status < 300:
        return _patient_of(orjson.loads(outcome.body))
    return None


def _entities(req: FHIRRequest, kind: str, query: list[tuple[str, str]], outcome: Outcome | None,
              requested: str | None) -> list[dict[str, Any]]:
    entities = []
    if requested is not None:
        entities.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "name": requested + ("?" + urlencode(query) if query else ""),
                         "description": "The request refused before it reached an interaction"})
    what = resource_reference(req, outcome)
    if what is not None:
        entities.append({"what": {"reference": what}, "type": {"system": ENTITY_TYPE, "code": "2",
                                                               "display": "System Object"},
                         "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}})
    if query and kind in ("search", "history", "history-instance", "operation"):
        entities.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                         "query": base64.b64encode(urlencode(query).encode()).decode()})
    patient = _patient(req, kind, query, outcome, what)
    if patient is not None:
        entities.append({"what": {"reference": f"Patient/{patient}"},
                         "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                         "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
    return entities


def audit_event(req: FHIRRequest, kind: str, query: list[tuple[str, str]], address: str | None, status: int,
                outcome: Outcome | None, failure: str | None = None, outcome_override: str | None = None,
                requested: str | None = None) -> tuple[str, bytes]:
    """(id, JSON) of the AuditEvent of one interaction; `query` is the query as the client sent it, and
    `requested` the method and path of a request refused before any interaction ran."""
    event_id = _event_id()
    query = [(name, value) for name, value in query if name not in SECRET_PARAMETERS]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": event_id,
        "type": SECURITY_ALERT if status in SECURITY_STATUSES else EVENT_TYPE, "subtype": _subtype(req, kind),
        "action": ACTIONS.get(kind, "E"),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": outcome_override or outcome_code(status),
        "agent": _agents(req, address),
        "source": {"observer": SERVER, "type": SOURCE_TYPE},
    }
    if failure:
        event["outcomeDesc"] = f"{status}: {failure}"[:1000]
    tenant = tenants.current.get()
    if tenant is not None:
        event["source"]["site"] = tenant.name
    entities = _entities(req, kind, query, outcome, requested)
    if entities:
        event["entity"] = entities
    return event_id, orjson.dumps(event)
