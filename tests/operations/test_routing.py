"""Every registered operation x method x level, over HTTP: the router enforces each OperationDefinition
(levels, resource types, POST-only when it changes data) before any handler runs."""

import httpx
import pytest

from fhir_server.operations.registry import OPERATIONS

# What each OperationDefinition under resources/operations/ declares, written out here so the router is
# checked against the definitions rather than against itself: type -> levels, and the methods of each level.
POST = ("POST",)
GET_POST = ("GET", "POST")
EXPECTED = {
    "validate": {"types": None, "levels": {"type": POST, "instance": GET_POST}},
    "reindex": {"types": None, "levels": {"system": POST, "type": POST}},
    "match": {"types": "Patient", "levels": {"type": POST, "instance": GET_POST}},
    "merge": {"types": "Patient", "levels": {"type": POST}},
    "unmerge": {"types": "Patient", "levels": {"type": POST}},
    "everything": {"types": "Patient", "levels": {"instance": GET_POST}},
    "render": {"types": "Basic", "levels": {"type": POST, "instance": POST}},
    "send-bulk": {"types": "CommunicationRequest", "levels": {"type": POST}},
    "download": {"types": "DocumentReference", "levels": {"instance": GET_POST}},
    "semantic-search": {"types": None, "levels": {"system": GET_POST, "type": GET_POST}},
}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
INSTANCES = {
    "Patient": {"resourceType": "Patient", "name": [{"family": "Router"}]},
    "Basic": {"resourceType": "Basic", "code": {"text": "template"}},
    "DocumentReference": {"resourceType": "DocumentReference", "status": "current",
                          "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]},
    "CommunicationRequest": {"resourceType": "CommunicationRequest", "status": "draft"},
    "Observation": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
}


def _cases(code: str) -> list[tuple[str, str, str]]:
    """(method, level, resource type or ''), over every level on an offered type and on one that is not."""
    offered = EXPECTED[code]["types"]
    types = (offered, "Observation") if offered else ("Patient",)
    return [(method, level, resource_type) for method in METHODS
            for level, resource_type in [("system", ""), *((level, t) for t in types for level in ("type", "instance"))]]


def test_the_table_covers_every_registered_operation() -> None:
    assert set(EXPECTED) == set(OPERATIONS)


def test_the_capability_statement_offers_each_operation_where_the_router_runs_it(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()["rest"][0]
    assert {operation["name"] for operation in statement["operation"]} == \
        {code for code, expected in EXPECTED.items() if "system" in expected["levels"]}
    by_type = {resource["type"]: {operation["name"] for operation in resource["operation"]}
               for resource in statement["resource"]}
    for code, expected in EXPECTED.items():
        on_types = set(expected["levels"]) - {"system"}
        offered = [name for name, operations in by_type.items() if code in operations]
        if not on_types:
            assert offered == []
        elif expected["types"]:
            assert offered == [expected["types"]]
        else:
            assert len(offered) == len(by_type)
        for operation in statement["operation"] + [op for resource in statement["resource"]
                                                   for op in resource["operation"]]:
            if operation["name"] == code:
                assert operation["definition"] == OPERATIONS[code].definition.url


@pytest.mark.parametrize("code", EXPECTED)
def test_the_router_enforces_the_operation_definition(client: httpx.Client, code: str) -> None:
    expected = EXPECTED[code]
    instances = {}
    for resource_type in {expected["types"] or "Patient", "Observation"}:
        created = client.post(f"/{resource_type}", json=INSTANCES[resource_type])
        assert created.status_code == 201, created.text
        instances[resource_type] = created.json()["id"]
    for method, level, resource_type in _cases(code):
        path = {"system": f"/${code}", "type": f"/{resource_type}/${code}",
                "instance": f"/{resource_type}/{instances.get(resource_type)}/${code}"}[level]
        response = client.request(method, path, json={"resourceType": "Parameters"} if method != "GET" else None)
        case = f"{method} {path}: {response.status_code} {response.text[:300]}"
        outcome = response.json() if response.headers.get("content-type", "").startswith("application/fhir+json") \
            else {}
        diagnostics = " ".join(issue.get("diagnostics", "") for issue in outcome.get("issue", ()))
        if level not in expected["levels"] or expected["types"] not in (None, resource_type or expected["types"]):
            assert response.status_code == 404 and outcome["resourceType"] == "OperationOutcome", case
            assert f"${code} is not defined at the {level} level" in diagnostics, case
            continue
        allowed = expected["levels"][level]
        if method not in allowed:
            assert response.status_code == 405 and outcome["resourceType"] == "OperationOutcome", case
            assert response.headers["allow"] == ", ".join(allowed), case
            assert f"{method} is not allowed for ${code} at the {level} level" in diagnostics, case
            continue
        # The handler ran: whatever it answers (an empty Parameters is bad input for most), not the router's.
        assert response.status_code != 405 and "is not defined at the" not in diagnostics, case


def test_an_unknown_operation_is_404_with_an_operation_outcome(client: httpx.Client) -> None:
    for path in ("/$nonsense", "/Patient/$nonsense", "/Patient/x/$nonsense"):
        response = client.post(path, json={"resourceType": "Parameters"})
        assert response.status_code == 404
        assert "$nonsense is not known" in response.json()["issue"][0]["diagnostics"]


def test_bundle_entries_are_routed_by_the_same_rules(client: httpx.Client, db) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/$merge"}},
        {"request": {"method": "GET", "url": "Observation/$everything"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
    ]}
    entries = client.post("/", json=bundle).json()["entry"]
    assert [entry["response"]["status"][:3] for entry in entries] == ["405", "404", "201"]
    assert "GET is not allowed for $merge" in entries[0]["response"]["outcome"]["issue"][0]["diagnostics"]


def test_get_instance_validate_reads_mode_from_the_query(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                               "for": {"reference": f"Patient/{pid}"}})
    issues = client.get(f"/Patient/{pid}/$validate", params={"mode": "delete"}).json()["issue"]
    assert issues[0]["code"] == "conflict"
