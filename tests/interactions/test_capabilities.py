"""capabilities: /metadata is a valid R4 CapabilityStatement, equal to capability-statement.json."""

import json
from pathlib import Path

import httpx

from fhir_server.validation import validate_resource

COMMITTED = Path(__file__).parent.parent.parent / "capability-statement.json"


def test_metadata_is_a_valid_capability_statement(client: httpx.Client) -> None:
    response = client.get("/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert validate_resource(statement, "CapabilityStatement") == []
    resources = {resource["type"]: resource for resource in statement["rest"][0]["resource"]}
    assert len(resources) >= 145
    patient = resources["Patient"]
    params = {param["name"]: param["type"] for param in patient["searchParam"]}
    assert params["family"] == "string" and params["birthdate"] == "date" and params["_id"] == "token"
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type", "history-instance"} <= {
        i["code"] for i in patient["interaction"]}
    assert {i["code"] for i in statement["rest"][0]["interaction"]} >= {"transaction", "batch", "history-system"}


def test_committed_capability_statement_matches_server(client: httpx.Client, server_url: str) -> None:
    """The committed file is the statement without what depends on the request: its base URL."""
    served = client.get("/metadata").json()
    assert served["implementation"].pop("url") == server_url
    assert "security" not in served["rest"][0]  # FHIR_AUTH=none: no tokens to ask for
    assert json.loads(COMMITTED.read_text()) == served
