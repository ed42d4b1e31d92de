"""Discovery: the SMART configuration and OpenID configuration, built from the request's own base."""

import httpx


def test_smart_configuration(client: httpx.Client, origin: str) -> None:
    response = client.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.json()
    assert config["issuer"] == origin + "/fhir"
    assert config["authorization_endpoint"] == origin + "/auth/authorize"
    assert config["token_endpoint"] == origin + "/auth/token"
    assert config["introspection_endpoint"] == origin + "/auth/introspect"
    assert config["revocation_endpoint"] == origin + "/auth/revoke"
    assert config["jwks_uri"] == origin + "/auth/jwks"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["response_types_supported"] == ["code"]
    assert set(config["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert set(config["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "client_secret_basic", "none"}
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-standalone-patient", "context-ehr-patient",
            "permission-patient", "permission-user", "permission-v1", "permission-v2", "permission-offline",
            "permission-online", "sso-openid-connect", "authorize-post"} <= set(config["capabilities"])
    assert "launch/patient" in config["scopes_supported"]


def test_endpoints_follow_the_host_header(client: httpx.Client) -> None:
    config = client.get("/.well-known/smart-configuration", headers={"Host": "fhir.example.org"}).json()
    assert config["token_endpoint"] == "http://fhir.example.org/auth/token"
    assert config["issuer"] == "http://fhir.example.org/fhir"


def test_openid_configuration_and_empty_jwks(client: httpx.Client, origin: str) -> None:
    config = client.get("/.well-known/openid-configuration").json()
    assert config["issuer"] == origin + "/fhir"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    assert httpx.get(origin + "/auth/jwks").json() == {"keys": []}



async def test_capability_statement_names_the_smart_endpoints(configured_client) -> None:
    async with configured_client(FHIR_AUTH="smart") as smart:
        response = await smart.get("/metadata")  # no token: clients discover the server before they have one
        config = (await smart.get("/.well-known/smart-configuration")).json()
    assert response.status_code == 200
    statement = response.json()
    assert statement["implementation"]["url"] == str(smart.base_url).rstrip("/")
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    [oauth_uris] = [e for e in security["extension"]
                    if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"]
    assert {e["url"]: e["valueUri"] for e in oauth_uris["extension"]} == {
        "authorize": config["authorization_endpoint"], "token": config["token_endpoint"],
        "introspect": config["introspection_endpoint"], "revoke": config["revocation_endpoint"]}


async def test_capability_statement_follows_the_settings_of_its_server(configured_client) -> None:
    """Two servers in one process at the same base: each statement says what its own settings do."""
    async with configured_client(FHIR_AUTH="smart") as smart:
        without_cors = (await smart.get("/metadata")).json()["rest"][0]["security"]
    async with configured_client(FHIR_AUTH="smart", FHIR_CORS_ORIGINS="https://app.example") as smart:
        with_cors = (await smart.get("/metadata")).json()["rest"][0]["security"]
    async with configured_client(FHIR_AUTH="none") as open_server:
        no_tokens = (await open_server.get("/metadata")).json()["rest"][0]
    assert without_cors["cors"] is False and with_cors["cors"] is True
    assert "security" not in no_tokens
