"""Tenant routing and tokens: bases per tenant, unknown tenants, and tokens that work at their own tenant only."""

import base64
import json
import re

import httpx

from tests.auth.conftest import REDIRECT_URI, exchange_code, form_token, pkce, redirect_params
from tests.tenancy.conftest import Tenancy, cli


def test_unknown_or_missing_tenant_is_404(tenancy: Tenancy) -> None:
    for path in ("/fhir/nobody/metadata", "/fhir/Patient", "/fhir/metadata", "/fhir/NOT_VALID/Patient",
                 "/fhir/nobody/.well-known/smart-configuration", "/auth/token", "/fhir", "/"):
        response = httpx.get(tenancy.origin + path)
        assert response.status_code == 404, path
        assert response.json()["resourceType"] == "OperationOutcome"


def test_discovery_names_the_tenant_base(tenancy: Tenancy) -> None:
    base = tenancy.url("beta")
    smart = httpx.get(f"{base}/.well-known/smart-configuration").json()
    assert smart["issuer"] == base
    assert smart["token_endpoint"] == f"{base}/auth/token"
    assert smart["authorization_endpoint"] == f"{base}/auth/authorize"
    assert httpx.get(f"{base}/metadata").json()["resourceType"] == "CapabilityStatement"


def test_each_tenant_signs_with_its_own_keys(tenancy: Tenancy) -> None:
    kids = {}
    for name in ("alpha", "beta"):
        header = tenancy.token(name).split(".")[0]
        kids[name] = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        published = {key["kid"] for key in httpx.get(f"{tenancy.url(name)}/auth/jwks").json()["keys"]}
        assert kids[name] in published and kids[other] not in published


def test_a_token_works_at_its_own_tenant_only(tenancy: Tenancy, tenant_db) -> None:
    alpha_token = tenancy.token("alpha")
    bearer = {"Authorization": f"Bearer {alpha_token}"}
    assert httpx.get(f"{tenancy.url('alpha')}/Patient", headers=bearer).status_code == 200
    refused = httpx.get(f"{tenancy.url('beta')}/Patient", headers=bearer)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["www-authenticate"]
    assert httpx.post(f"{tenancy.url('beta')}/Patient", headers=bearer,
                      json={"resourceType": "Patient"}).status_code == 401
    assert httpx.get(f"{tenancy.url('beta')}/Patient").status_code == 401

    # A client of alpha is unknown at beta's token endpoint; introspection at beta does not accept alpha's token.
    assert httpx.post(f"{tenancy.url('beta')}/auth/token", auth=tenancy.credentials["alpha"],
                      data={"grant_type": "client_credentials", "scope": "system/*.rs"}).status_code == 401
    introspected = httpx.post(f"{tenancy.url('beta')}/auth/introspect", auth=tenancy.credentials["beta"],
                              data={"token": alpha_token, "token_type_hint": "access_token"}).json()
    assert introspected == {"active": False}
    assert httpx.post(f"{tenancy.url('alpha')}/auth/introspect", auth=tenancy.credentials["alpha"],
                      data={"token": alpha_token}).json()["active"] is True


def test_authorization_code_flow_at_a_tenant_base(tenancy: Tenancy, database_url: str, tenant_db) -> None:
    """Users and apps are registered per tenant; the pages, their cookie and the code live below the tenant."""
    alpha = tenancy.url("alpha")
    cli(database_url, "users", "add", "carol", "--password-stdin", "--tenant", "alpha", input="s3cret\n")
    client_id = re.search(r"client_id: (\S+)", cli(
        database_url, "clients", "add", "Chart", "--type", "public", "--redirect-uri", REDIRECT_URI,
        "--scope", "openid fhirUser user/*.rs", "--tenant", "alpha").stdout)[1]
    verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "state": "s",
             "scope": "openid user/*.rs", "aud": alpha, "code_challenge": challenge, "code_challenge_method": "S256"}

    with httpx.Client(timeout=30) as browser:
        # Neither the app nor the user exists at beta, and alpha's authorize endpoint wants alpha's base as aud.
        assert browser.get(f"{tenancy.url('beta')}/auth/authorize", params={**query, "aud": tenancy.url("beta")}
                           ).status_code == 400
        wrong_audience = browser.get(f"{alpha}/auth/authorize", params={**query, "aud": tenancy.url("beta")})
        assert redirect_params(wrong_audience)["error"] == "invalid_request"
        page = browser.get(f"{alpha}/auth/authorize", params=query)
        assert page.status_code == 200 and 'name="password"' in page.text
        assert {cookie.path for cookie in browser.cookies.jar} == {"/fhir/alpha/auth/authorize"}
        consent = browser.post(f"{alpha}/auth/authorize/login",
                               data={"form_token": form_token(page.text), "username": "carol", "password": "s3cret"})
        assert consent.status_code == 200, consent.text
        approved = browser.post(f"{alpha}/auth/authorize/consent",
                                data={"form_token": form_token(consent.text), "action": "approve",
                                      "scope": ["openid", "user/*.rs"]})
        granted = redirect_params(approved)
        assert "code" in granted, granted
        code = granted["code"]
        exchanged = exchange_code(browser, alpha, code, verifier, client_id)
        assert exchanged.status_code == 200, exchanged.text
        bearer = {"Authorization": f"Bearer {exchanged.json()['access_token']}"}
    assert httpx.get(f"{alpha}/Patient", headers=bearer).status_code == 200
    assert httpx.get(f"{tenancy.url('beta')}/Patient", headers=bearer).status_code == 401
