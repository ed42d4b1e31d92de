"""The authorization code flow with PKCE over HTTP: the login and consent pages posted as a browser would,
standalone and EHR launches, patient context, pre-approved clients, and the errors on the way."""

import re

import httpx
import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_server.auth.registry import add_client, add_user
from tests.auth.conftest import (REDIRECT_URI, authorize_url, exchange_code, form_token, pkce,
                                 redirect_params)

SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


@pytest.fixture
async def app_client(aconn: psycopg.AsyncConnection) -> str:
    await add_user(aconn, "alice", "wonderland", fhir_user="Practitioner/p1")
    client, _ = await add_client(aconn, "Growth Chart", "public", [REDIRECT_URI],
                                 "openid fhirUser launch launch/patient patient/*.rs offline_access".split())
    return client.client_id


@pytest.fixture
def browser(server_url: str) -> httpx.Client:
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        yield http


def create_patient(client: httpx.Client, family: str, given: str) -> str:
    response = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family, "given": [given]}]})
    assert response.status_code == 201
    return response.json()["id"]


def log_in(browser: httpx.Client, url: str, password: str = "wonderland") -> httpx.Response:
    page = browser.get(url)
    assert page.status_code == 200 and 'name="password"' in page.text
    assert page.headers["x-frame-options"] == "DENY"
    return browser.post(url.split("/auth/")[0] + "/auth/authorize/login",
                        data={"form_token": form_token(page.text), "username": "alice", "password": password})


async def test_standalone_launch_with_login_consent_and_patient_picker(
        client: httpx.Client, browser: httpx.Client, origin: str, app_client: str) -> None:
    smith = create_patient(client, "Smith", "Ann")
    create_patient(client, "Jones", "Bob")
    verifier, challenge = pkce()
    url = authorize_url(origin, app_client, SCOPE, challenge, nonce="n-1")

    wrong = log_in(browser, url, password="nope")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text

    consent = log_in(browser, url)
    assert consent.status_code == 200
    assert "Allow access?" in consent.text and "Ann Smith" in consent.text and "Bob Jones" in consent.text
    assert "Read and search all record types of the selected patient" in consent.text
    # The name box narrows the patient list.
    found = browser.post(origin + "/auth/authorize/consent",
                         data={"form_token": form_token(consent.text), "action": "search", "name": "smi"})
    assert "Ann Smith" in found.text and "Bob Jones" not in found.text
    approved = browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(found.text), "action": "approve", "patient": smith,
        "scope": SCOPE.split()})
    params = redirect_params(approved)
    assert params["state"] == "st-1" and "code" in params

    token = exchange_code(browser, origin, params["code"], verifier, app_client)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == SCOPE
    assert body["patient"] == smith and body["need_patient_banner"] is True
    assert body["refresh_token"]
    keys = KeySet.import_key_set(httpx.get(origin + "/auth/jwks").json())
    id_token = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert id_token["aud"] == app_client and id_token["nonce"] == "n-1"
    assert id_token["fhirUser"] == origin + "/fhir/Practitioner/p1" and id_token["sub"] == "alice"
    access = jwt.decode(body["access_token"], keys, algorithms=["RS256"])
    assert access.header["kid"] in {key["kid"] for key in httpx.get(origin + "/auth/jwks").json()["keys"]}
    assert access.claims["aud"] == origin + "/fhir" and access.claims["patient"] == smith
    assert access.claims["fhirUser"] == "Practitioner/p1" and access.claims["tenant"] is None

    reused = exchange_code(browser, origin, params["code"], verifier, app_client)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


async def test_unchecked_scopes_are_not_granted(browser: httpx.Client, origin: str, app_client: str) -> None:
    verifier, challenge = pkce()
    consent = log_in(browser, authorize_url(origin, app_client, "openid fhirUser patient/*.rs", challenge))
    assert 'name="patient"' not in consent.text  # no launch/patient: no picker
    approved = browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(consent.text), "action": "approve", "scope": ["patient/*.rs"]})
    body = exchange_code(browser, origin, redirect_params(approved)["code"], verifier, app_client).json()
    assert body["scope"] == "patient/*.rs" and "id_token" not in body and "refresh_token" not in body


async def test_wrong_verifier_uses_up_the_code(browser: httpx.Client, origin: str, app_client: str) -> None:
    verifier, challenge = pkce()
    consent = log_in(browser, authorize_url(origin, app_client, "patient/*.rs", challenge))
    code = redirect_params(browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(consent.text), "action": "approve", "scope": "patient/*.rs"}))["code"]
    wrong = exchange_code(browser, origin, code, pkce()[0], app_client)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert exchange_code(browser, origin, code, verifier, app_client).json()["error"] == "invalid_grant"


async def test_deny(browser: httpx.Client, origin: str, app_client: str) -> None:
    consent = log_in(browser, authorize_url(origin, app_client, "patient/*.rs", pkce()[1]))
    denied = browser.post(origin + "/auth/authorize/consent",
                          data={"form_token": form_token(consent.text), "action": "deny"})
    assert redirect_params(denied) == {"error": "access_denied", "error_description": "the user denied access",
                                       "state": "st-1"}


async def test_forms_are_bound_to_the_browser(browser: httpx.Client, origin: str, app_client: str) -> None:
    url = authorize_url(origin, app_client, "patient/*.rs", pkce()[1])
    page = browser.get(url)
    # Another browser (no cookie) posting the same form is refused, as is a tampered token.
    with httpx.Client() as other:
        stolen = other.post(origin + "/auth/authorize/login", data={
            "form_token": form_token(page.text), "username": "alice", "password": "wonderland"})
    assert stolen.status_code == 400 and "not opened in this browser" in stolen.text
    tampered = form_token(page.text)[:-4] + "AAAA"
    refused = browser.post(origin + "/auth/authorize/login",
                           data={"form_token": tampered, "username": "alice", "password": "wonderland"})
    assert refused.status_code == 400
    # A login form cannot be posted as a consent.
    skipped = browser.post(origin + "/auth/authorize/consent",
                           data={"form_token": form_token(page.text), "action": "approve"})
    assert skipped.status_code == 400


@pytest.mark.parametrize("change, error", [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"aud": "https://other.example/fhir"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "system/*.rs user/*.rs"}, "invalid_scope"),
    ({"launch": "no-such-launch"}, "invalid_request"),
])
async def test_bad_requests_go_back_to_the_client(browser: httpx.Client, origin: str, app_client: str,
                                                   change: dict, error: str) -> None:
    change = dict(change)
    scope = change.pop("scope", "patient/*.rs")
    response = browser.get(authorize_url(origin, app_client, scope, pkce()[1], **change))
    params = redirect_params(response)
    assert params["error"] == error and params["state"] == "st-1"


async def test_unknown_client_or_redirect_uri_is_not_redirected(browser: httpx.Client, origin: str,
                                                                app_client: str) -> None:
    response = browser.get(authorize_url(origin, app_client, "patient/*.rs", pkce()[1]).replace(
        "app.example", "evil.example"))
    assert response.status_code == 400 and "redirect_uri is not registered" in response.text
    response = browser.get(authorize_url(origin, "nobody", "patient/*.rs", pkce()[1]))
    assert response.status_code == 400 and "Unknown client_id" in response.text


async def test_user_bound_to_a_patient_gets_that_patient(client: httpx.Client, browser: httpx.Client, origin: str,
                                                          aconn: psycopg.AsyncConnection) -> None:
    patient = create_patient(client, "Doe", "Jane")
    await add_user(aconn, "jane", "secret-pw", patient=patient)
    registered, _ = await add_client(aconn, "Patient app", "public", [REDIRECT_URI],
                                     ["launch/patient", "patient/*.rs", "openid", "fhirUser"])
    verifier, challenge = pkce()
    url = authorize_url(origin, registered.client_id, "launch/patient patient/*.rs openid fhirUser", challenge)
    page = browser.get(url)
    consent = browser.post(origin + "/auth/authorize/login",
                           data={"form_token": form_token(page.text), "username": "jane", "password": "secret-pw"})
    assert f"Jane Doe (Patient/{patient})" in consent.text and 'name="patient"' not in consent.text
    approved = browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(consent.text), "action": "approve",
        "scope": ["launch/patient", "patient/*.rs", "openid", "fhirUser"]})
    body = exchange_code(browser, origin, redirect_params(approved)["code"], verifier, registered.client_id).json()
    assert body["patient"] == patient
    keys = KeySet.import_key_set(httpx.get(origin + "/auth/jwks").json())
    assert jwt.decode(body["id_token"], keys).claims["fhirUser"] == f"{origin}/fhir/Patient/{patient}"


async def test_ehr_launch(client: httpx.Client, browser: httpx.Client, origin: str, app_client: str,
                          aconn: psycopg.AsyncConnection) -> None:
    patient = create_patient(client, "Launch", "Larry")
    ehr, secret = await add_client(aconn, "EHR", "confidential-symmetric", [], [])
    assert client.post(origin + "/auth/launch", data={"patient": patient}).status_code == 401
    launch = client.post(origin + "/auth/launch", data={"patient": patient, "encounter": "e1"},
                         auth=(ehr.client_id, secret)).json()["launch"]
    verifier, challenge = pkce()
    consent = log_in(browser, authorize_url(origin, app_client, "launch patient/*.rs", challenge, launch=launch))
    assert f"Larry Launch (Patient/{patient})" in consent.text
    approved = browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(consent.text), "action": "approve", "scope": ["launch", "patient/*.rs"]})
    body = exchange_code(browser, origin, redirect_params(approved)["code"], verifier, app_client).json()
    assert body["patient"] == patient and body["encounter"] == "e1" and body["need_patient_banner"] is False
    assert body["scope"] == "launch patient/*.rs"


async def test_pre_approved_client_skips_the_pages(browser: httpx.Client, origin: str,
                                                   aconn: psycopg.AsyncConnection) -> None:
    await add_user(aconn, "robot", "robot-pw", fhir_user="Practitioner/r")
    registered, _ = await add_client(aconn, "Test suite", "public", [REDIRECT_URI], ["user/*.rs", "openid"],
                                     pre_approved_user="robot")
    verifier, challenge = pkce()
    response = browser.get(authorize_url(origin, registered.client_id, "user/*.rs openid system/*.rs", challenge))
    assert response.status_code == 302
    body = exchange_code(browser, origin, redirect_params(response)["code"], verifier, registered.client_id).json()
    assert body["scope"] == "user/*.rs openid"


async def test_authorize_post(browser: httpx.Client, origin: str, app_client: str) -> None:
    url = authorize_url(origin, app_client, "patient/*.rs", pkce()[1])
    path, _, query = url.partition("?")
    page = browser.post(path, content=query, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert page.status_code == 200 and re.search(r'name="form_token"', page.text)


async def test_confidential_client_must_authenticate_to_redeem(browser: httpx.Client, origin: str,
                                                                aconn: psycopg.AsyncConnection) -> None:
    await add_user(aconn, "alice", "wonderland")
    registered, secret = await add_client(aconn, "Server app", "confidential-symmetric", [REDIRECT_URI],
                                          ["user/*.rs"])
    verifier, challenge = pkce()
    consent = log_in(browser, authorize_url(origin, registered.client_id, "user/*.rs", challenge))
    code = redirect_params(browser.post(origin + "/auth/authorize/consent", data={
        "form_token": form_token(consent.text), "action": "approve", "scope": "user/*.rs"}))["code"]
    unauthenticated = exchange_code(browser, origin, code, verifier, registered.client_id)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"] == "invalid_client"
    response = browser.post(origin + "/auth/token", auth=(registered.client_id, secret), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
    assert response.status_code == 200 and response.json()["scope"] == "user/*.rs"
