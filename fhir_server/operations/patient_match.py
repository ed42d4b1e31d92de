"""Patient/$match (R4): likely duplicates of a Patient, scored and graded, as a searchset Bundle.

POST Patient/$match takes a (partial) Patient in the `resource` parameter; GET Patient/[id]/$match finds
duplicates of a stored Patient, leaving itself out. Candidates come from indexed blocking queries
(`identity.blocking`), and are scored by the rules in `identity.match_rules`.
"""

from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.errors import FHIRError
from fhir_server.identity import blocking, matching
from fhir_server.identity.match_rules import WEIGHTS
from fhir_server.operations import parameters as params
from fhir_server.operations.definitions import operation_definition
from fhir_server.request import FHIRRequest, Outcome
from fhir_server.search import bundle
from fhir_server.settings import get_settings
from fhir_server.storage import repository
from fhir_server.validation import validate_resource

DEFINITION = operation_definition("Patient-match")
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
MATCH_EXPLANATION = "urn:fhir-server:extension:match-explanation"
DEFAULT_COUNT = 10
MAX_COUNT = 100
_GRADE_ORDER = {"certain": 0, "probable": 1, "possible": 2, "certainly-not": 3}


async def _query_patient(conn: AsyncConnection, req: FHIRRequest,
                         parameters: list[dict[str, Any]]) -> dict[str, Any]:
    if req.id is not None:
        stored = await repository.read(conn, "Patient", req.id)
        if stored is None or stored.deleted:
            raise FHIRError.of(404, "not-found", f"Patient/{req.id} is not known")
        return stored.json()
    found = params.one(parameters, "resource")
    patient = found.get("resource") if found else None
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise FHIRError.of(400, "required", "$match needs a Patient in the parameter 'resource'", "resource")
    issues = validate_resource(patient, "Patient")
    if issues:
        raise FHIRError(400, issues)
    return patient


def _explanation(result: matching.MatchResult) -> dict[str, Any]:
    """Why a candidate scored as it did: the deciding rule, and each compared field with its level and weight."""
    parts: list[dict[str, Any]] = []
    if result.rule:
        parts.append({"url": "rule", "valueString": result.rule})
    for field_name, level in result.levels.items():
        parts.append({"url": "field", "extension": [
            {"url": "name", "valueString": field_name},
            {"url": "level", "valueCode": level},
            {"url": "weight", "valueDecimal": WEIGHTS[field_name][level]},
        ]})
    return {"url": MATCH_EXPLANATION, "extension": parts}


def _entry(base_url: str, candidate: blocking.Candidate, result: matching.MatchResult) -> bytes:
    search = {"extension": [{"url": MATCH_GRADE, "valueCode": result.grade}, _explanation(result)],
              "mode": "match", "score": result.score}
    return (b'{"fullUrl":' + orjson.dumps(f"{base_url}/Patient/{candidate.fhir_id}") + b',"resource":'
            + candidate.content + b',"search":' + orjson.dumps(search) + b"}")


async def match(conn: AsyncConnection, req: FHIRRequest) -> Outcome:
    parameters = params.parameter_list(req)
    patient = await _query_patient(conn, req, parameters)
    only_certain = params.boolean(req, parameters, "onlyCertainMatches")
    count = params.integer(req, parameters, "count")
    count = min(count if count is not None else DEFAULT_COUNT, MAX_COUNT)

    query = matching.features(patient)
    found = await blocking.candidates(conn, patient, query, exclude_id=req.id,
                                      limit=get_settings().match_max_candidates)
    results = []
    for candidate in found:
        result = matching.compare(query, matching.features(orjson.loads(candidate.content), like=query))
        if result.grade == "none" or (only_certain and result.grade != "certain"):
            continue
        results.append((candidate, result))
    results.sort(key=lambda item: (_GRADE_ORDER[item[1].grade], -item[1].score, item[0].fhir_id))
    entries = [_entry(req.base_url, candidate, result) for candidate, result in results[:count]]
    self_url = f"{req.base_url}/Patient/{req.id}/$match" if req.id else f"{req.base_url}/Patient/$match"
    return Outcome(200, bundle.searchset([("self", self_url)], len(entries), entries))
