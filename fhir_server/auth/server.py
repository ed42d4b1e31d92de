"""The OAuth 2 endpoints of SMART App Launch and Backend Services: discovery, token, introspection,
revocation, JWKS, EHR launch; the authorization endpoint's pages live in `authorize`."""

import base64
import hashlib
import hmac
import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from psycopg import AsyncConnection

from fhir_server.auth import authorize as authorize_pages
from fhir_server.auth import throttle
from fhir_server.auth.client_auth import (ASSERTION_ALGORITHMS, authenticate_client, claimed_client_id,
                                          require_confidential)
from fhir_server.auth.endpoints import AUTH_PREFIX, AuthHost, Endpoints, endpoints
from fhir_server.auth.errors import OAuthError
from fhir_server.auth.grants import (GrantedAccess, RefreshLifetimes, create_launch, create_refresh_token,
                                     grantable, is_system_scope, redeem_code, refresh_token_grant,
                                     revoke_refresh_token, rotate_refresh_token)
from fhir_server.auth.keys import SIGNING_ALGORITHM, jwks
from fhir_server.auth.registry import Client
from fhir_server.auth.tokens import (ACCESS_TOKEN_TYPE, InvalidToken, issue_tokens, revoke_access_token,
                                     verify_access_token, verify_signed)

Form = dict[str, str]
CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SCOPES_SUPPORTED = [
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access",
    "online_access", "patient/*.rs", "patient/*.cruds", "patient/*.read", "patient/*.write", "user/*.rs",
    "user/*.cruds", "user/*.read", "user/*.write", "system/*.rs", "system/*.cruds", "system/*.read",
    "system/*.write",
]
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-standalone-patient", "context-ehr-patient", "permission-patient",
    "permission-user", "permission-v1", "permission-v2", "permission-offline", "permission-online",
    "sso-openid-connect", "authorize-post",
]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _oauth_error(error: OAuthError, request: Request) -> Response:
    headers = dict(NO_STORE)
    if error.status == 401 and request.headers.get("authorization", "")[:6].lower() == "basic ":
        headers["WWW-Authenticate"] = 'Basic realm="fhir-server"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return _json({"error": error.error, "error_description": error.description}, error.status, headers)


async def _form(request: Request) -> Form:
    return {key: value for key, value in (await request.form()).items() if isinstance(value, str)}


def smart_configuration(urls: Endpoints) -> dict[str, Any]:
    return {
        "issuer": urls.issuer,
        "jwks_uri": urls.at("jwks"),
        "authorization_endpoint": urls.at("authorize"),
        "token_endpoint": urls.at("token"),
        "introspection_endpoint": urls.at("introspect"),
        "revocation_endpoint": urls.at("revoke"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "capabilities": CAPABILITIES,
    }


def openid_configuration(urls: Endpoints) -> dict[str, Any]:
    smart = smart_configuration(urls)
    return {**{key: smart[key] for key in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint",
                                           "scopes_supported", "response_types_supported",
                                           "grant_types_supported", "code_challenge_methods_supported",
                                           "token_endpoint_auth_methods_supported",
                                           "token_endpoint_auth_signing_alg_values_supported")},
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": [SIGNING_ALGORITHM],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"]}


def _pkce_matches(verifier: str, challenge: str) -> bool:
    if not CODE_VERIFIER.match(verifier):
        return False
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return hmac.compare_digest(digest, challenge)


def auth_router(app: AuthHost) -> APIRouter:
    """The routes of the authorization server, for the application's FastAPI app."""
    settings = app.settings
    router = APIRouter()
    lifetimes = RefreshLifetimes(settings.auth_online_refresh_lifetime, settings.auth_offline_refresh_lifetime)

    # With tenants these are reached below each tenant's base, which the application passes as the root path.
    fhir_root = "" if settings.tenancy == "url" else settings.base_path

    @router.get(f"{fhir_root}/.well-known/smart-configuration")
    async def smart_configuration_route(request: Request) -> Response:
        return _json(smart_configuration(endpoints(request, settings)))

    @router.get(f"{fhir_root}/.well-known/openid-configuration")
    async def openid_configuration_route(request: Request) -> Response:
        return _json(openid_configuration(endpoints(request, settings)))

    @router.api_route(f"{AUTH_PREFIX}/authorize", methods=["GET", "POST"])
    async def authorize_route(request: Request) -> Response:
        return await authorize_pages.authorize(request, app)

    @router.post(f"{AUTH_PREFIX}/authorize/login")
    async def login_route(request: Request) -> Response:
        return await authorize_pages.login(request, app)

    @router.post(f"{AUTH_PREFIX}/authorize/consent")
    async def consent_route(request: Request) -> Response:
        return await authorize_pages.consent(request, app)

    @router.get(f"{AUTH_PREFIX}/jwks")
    async def jwks_route() -> Response:
        async with app.pool.connection() as conn:
            return _json(await jwks(conn), headers={"Cache-Control": "max-age=60"})

    def oauth_endpoint(name: str):
        """Route POST /auth/NAME to a handler of (request, form, connection, URLs) inside one connection;
        an OAuthError becomes the RFC 6749 error response."""

        def register(handler):
            @router.post(f"{AUTH_PREFIX}/{name}", name=name)
            async def route(request: Request) -> Response:
                form = await _form(request)
                try:
                    async with app.pool.connection() as conn:
                        return await handler(request, form, conn, endpoints(request, settings))
                except OAuthError as error:
                    return _oauth_error(error, request)
            return handler
        return register

    async def client_of(request: Request, form: Form, conn: AsyncConnection, urls: Endpoints, endpoint: str) -> Client:
        """The authenticated client; an assertion may be addressed to this endpoint or the token endpoint.
        Failed authentications are throttled per claimed client id and address."""
        authorization = request.headers.get("authorization")
        key = throttle.attempt_key("client", claimed_client_id(form, authorization), request)
        try:
            async with throttle.attempt(conn, key, settings) as attempt:
                try:
                    return await authenticate_client(conn, form, authorization, (urls.at("token"), urls.at(endpoint)))
                except OAuthError as error:
                    attempt.failed = error.error == "invalid_client"
                    raise
        except throttle.TooManyFailures as refused:
            raise OAuthError("temporarily_unavailable", "Too many failed client authentications; retry after "
                                                        f"{refused.retry_after} seconds", 429,
                             refused.retry_after) from None

    @oauth_endpoint("token")
    async def token_route(request: Request, form: Form, conn: AsyncConnection, urls: Endpoints) -> Response:
        client = await client_of(request, form, conn, urls, "token")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = await _redeemed_grant(conn, client, form)
            refresh_token = await create_refresh_token(conn, grant, lifetimes) if grant.refreshable else None
        elif grant_type == "refresh_token":
            requested = form["scope"].split() if form.get("scope") else None
            grant, refresh_token = await rotate_refresh_token(
                conn, form.get("refresh_token", ""), client.client_id, requested, lifetimes)
        elif grant_type == "client_credentials":
            grant, refresh_token = _backend_grant(client, form), None
        else:
            raise OAuthError("unsupported_grant_type",
                             "grant_type must be authorization_code, refresh_token or client_credentials")
        issued = await issue_tokens(conn, grant, urls.issuer, settings)
        body = {"access_token": issued.pop("access_token"), "token_type": "Bearer", **issued,
                "scope": " ".join(grant.scopes)}
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if grant.patient is not None:
            body["patient"] = grant.patient
            body["need_patient_banner"] = grant.need_patient_banner
        if grant.encounter is not None:
            body["encounter"] = grant.encounter
        return _json(body, headers=NO_STORE)

    @oauth_endpoint("introspect")
    async def introspect_route(request: Request, form: Form, conn: AsyncConnection, urls: Endpoints) -> Response:
        require_confidential(await client_of(request, form, conn, urls, "introspect"))
        token = form.get("token", "")
        refresh = await refresh_token_grant(conn, token) if form.get("token_type_hint") != "access_token" else None
        if refresh is not None:
            grant, expires_at = refresh
            return _json({"active": True, "token_type": "refresh_token", "client_id": grant.client_id,
                          "scope": " ".join(grant.scopes), "username": grant.username, "exp": expires_at},
                         headers=NO_STORE)
        try:
            access = await verify_access_token(app.pool, token, urls.fhir_base)
        except InvalidToken:
            return _json({"active": False}, headers=NO_STORE)
        body = {"active": True, "token_type": "Bearer", "client_id": access.client_id,
                "scope": " ".join(access.scopes), "sub": access.subject or access.client_id,
                "exp": access.expires_at, "iss": urls.issuer, "aud": urls.fhir_base, "jti": access.jti}
        for name, value in (("username", access.subject), ("patient", access.patient),
                            ("fhirUser", access.fhir_user)):
            if value is not None:
                body[name] = value
        return _json(body, headers=NO_STORE)

    @oauth_endpoint("revoke")
    async def revoke_route(request: Request, form: Form, conn: AsyncConnection, urls: Endpoints) -> Response:
        client = await client_of(request, form, conn, urls, "revoke")
        token = form.get("token", "")
        if not await revoke_refresh_token(conn, token, client.client_id):
            await _revoke_access_token(app, conn, token, client)
        # RFC 7009 §2.2: unknown and invalid tokens are answered like revoked ones.
        return Response(status_code=200, headers=NO_STORE)

    @oauth_endpoint("launch")
    async def launch_route(request: Request, form: Form, conn: AsyncConnection, urls: Endpoints) -> Response:
        """An EHR (a confidential client) registers the context of a launch; the app gets `launch=<id>`."""
        require_confidential(await client_of(request, form, conn, urls, "launch"))
        if not form.get("patient"):
            raise OAuthError("invalid_request", "patient is required")
        launch = await create_launch(conn, form["patient"], form.get("encounter") or None)
        return _json({"launch": launch}, headers=NO_STORE)

    return router


async def _redeemed_grant(conn: AsyncConnection, client: Client, form: dict[str, str]) -> GrantedAccess:
    redeemed = await redeem_code(conn, form.get("code", ""))
    if redeemed is None:
        raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
    grant, redirect_uri, challenge = redeemed
    if grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if form.get("redirect_uri") != redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    if not _pkce_matches(form.get("code_verifier", ""), challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    return grant


def _backend_grant(client: Client, form: dict[str, str]) -> GrantedAccess:
    if not client.confidential:
        raise OAuthError("unauthorized_client", "client_credentials is for confidential clients")
    scopes = tuple(scope for scope in grantable(form.get("scope", "").split(), client.scopes)
                   if is_system_scope(scope))
    if not scopes:
        raise OAuthError("invalid_scope", "none of the requested system scopes is allowed for this client")
    return GrantedAccess(client.client_id, None, scopes)


async def _revoke_access_token(app: AuthHost, conn: AsyncConnection, token: str, client: Client) -> None:
    try:
        claims = await verify_signed(app.pool, token, ACCESS_TOKEN_TYPE)
    except InvalidToken:
        return
    if claims.get("client_id") == client.client_id and isinstance(claims.get("exp"), int) \
            and isinstance(claims.get("jti"), str):
        await revoke_access_token(app.pool, conn, claims["jti"], claims["exp"])
