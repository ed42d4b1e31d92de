"""The authorization endpoint: request checks, the login and consent pages, and the code that ends them.

No server session: what the pages need travels in a form token, a JWT signed with the server's key that
lives ten minutes and is bound to the browser by a random cookie (its SHA-256 is in the token), so a form
posted from another site, or a token lifted from another browser, is refused.
"""

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from psycopg import AsyncConnection

from fhir_server.auth import throttle
from fhir_server.auth.endpoints import AuthHost, Endpoints, endpoints
from fhir_server.auth.grants import GrantedAccess, create_code, grantable, is_system_scope, launch_context
from fhir_server.auth.keys import FORM_TOKEN_LIFETIME, sign, signing_key
from fhir_server.auth.pages import consent_page, error_page, login_page
from fhir_server.auth.registry import Client, User, authenticate_user, get_client, get_user
from fhir_server.auth.tokens import InvalidToken, verify_signed
from fhir_server.search.values import normalize_string

FORM_TOKEN_TYPE = "smart-authorize+jwt"
CSRF_COOKIE = "fhir_authorize_csrf"
PATIENT_CHOICES = 50


class AuthorizeError(Exception):
    """An error to send back to the client's redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Pending:
    """A checked authorization request waiting for login and consent."""

    client_id: str
    redirect_uri: str
    state: str | None
    scopes: tuple[str, ...]
    code_challenge: str
    nonce: str | None = None
    launch_patient: str | None = None
    launch_encounter: str | None = None
    ehr_launch: bool = False

    def redirect(self, status: int, **params: str | None) -> RedirectResponse:
        params = {**params, "state": self.state}
        query = urlencode({key: value for key, value in params.items() if value is not None})
        separator = "&" if "?" in self.redirect_uri else "?"
        return RedirectResponse(f"{self.redirect_uri}{separator}{query}", status)


async def authorize(request: Request, app: AuthHost) -> Response:
    """GET or POST /auth/authorize: check the request, then log in, consent (or skip both if pre-approved)."""
    params = dict(request.query_params) if request.method == "GET" else dict((await request.form()).items())
    urls = endpoints(request, app.settings)
    status = 302 if request.method == "GET" else 303
    async with app.pool.connection() as conn:
        client = await get_client(conn, params.get("client_id", ""))
        # Without a known client and registered redirect URI there is nowhere safe to send an error.
        if client is None:
            return error_page("Unknown client_id.")
        if params.get("redirect_uri") not in client.redirect_uris:
            return error_page("The redirect_uri is not registered for this client.")
        pending = Pending(client.client_id, params["redirect_uri"], params.get("state"), (), "")
        try:
            pending = await _checked_request(conn, client, params, urls)
            if client.pre_approved_user is not None:
                user = await get_user(conn, client.pre_approved_user)
                if user is None:
                    raise AuthorizeError("access_denied", "the pre-approved user no longer exists")
                return await _finish(conn, pending, user, pending.scopes, None, status)
        except AuthorizeError as error:
            return pending.redirect(status, error=error.error, error_description=error.description)
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        form_token = await _form_token(conn, app, urls, "login", csrf, pending)
    response = login_page(urls.at("authorize/login"), form_token, client.name)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=FORM_TOKEN_LIFETIME, path=urls.path("authorize"), httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return response


async def _checked_request(conn: AsyncConnection, client: Client, params: dict[str, str],
                           urls: Endpoints) -> Pending:
    if params.get("response_type") != "code":
        raise AuthorizeError("unsupported_response_type", "response_type must be code")
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        raise AuthorizeError("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if params.get("aud", "").rstrip("/") != urls.fhir_base:
        raise AuthorizeError("invalid_request", f"aud must be the FHIR base URL {urls.fhir_base}")
    scopes = tuple(scope for scope in grantable(params.get("scope", "").split(), client.scopes)
                   if not is_system_scope(scope))
    patient = encounter = None
    launch = params.get("launch")
    if launch:
        context = await launch_context(conn, launch)
        if context is None:
            raise AuthorizeError("invalid_request", "unknown or expired launch")
        patient, encounter = context
    else:
        scopes = tuple(scope for scope in scopes if scope != "launch")
    if not scopes:
        raise AuthorizeError("invalid_scope", "none of the requested scopes is allowed for this client")
    return Pending(client.client_id, params["redirect_uri"], params.get("state"), scopes, params["code_challenge"],
                   params.get("nonce"), patient, encounter, bool(launch))


async def _form_token(conn: AsyncConnection, app: AuthHost, urls: Endpoints, step: str, csrf: str,
                      pending: Pending, username: str | None = None) -> str:
    kid, key = await signing_key(conn, app.settings.auth_key_rotation_days, app.settings.auth_token_lifetime)
    now = int(time.time())
    claims = {"iss": urls.issuer, "aud": urls.at("authorize"), "iat": now, "exp": now + FORM_TOKEN_LIFETIME,
              "step": step, "csrf": hashlib.sha256(csrf.encode()).hexdigest(),
              "pending": asdict(pending)}
    if username is not None:
        claims["sub"] = username
    return sign(claims, FORM_TOKEN_TYPE, kid, key)


async def _posted_form(request: Request, app: AuthHost, step: str) -> tuple[dict[str, Any], Any, Pending]:
    """The posted form, with the claims and pending request of its form token; InvalidToken if it is not ours,
    not for this step, expired, or not bound to this browser."""
    form = await request.form()
    claims = await verify_signed(app.pool, str(form.get("form_token", "")), FORM_TOKEN_TYPE)
    urls = endpoints(request, app.settings)
    csrf = request.cookies.get(CSRF_COOKIE, "")
    if claims.get("aud") != urls.at("authorize") or claims.get("step") != step:
        raise InvalidToken("the form does not belong to this step")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise InvalidToken("the form has expired; start again from the application")
    if not hmac.compare_digest(claims.get("csrf", ""), hashlib.sha256(csrf.encode()).hexdigest()):
        raise InvalidToken("the form was not opened in this browser (cookie missing or different)")
    pending = claims["pending"]
    return claims, form, Pending(**{**pending, "scopes": tuple(pending["scopes"])})


async def login(request: Request, app: AuthHost) -> Response:
    """POST /auth/authorize/login: check the password, then show the consent page."""
    try:
        _, form, pending = await _posted_form(request, app, "login")
    except InvalidToken as error:
        return error_page(str(error))
    urls = endpoints(request, app.settings)
    csrf = request.cookies[CSRF_COOKIE]
    username = str(form.get("username", ""))
    async with app.pool.connection() as conn:
        client = await get_client(conn, pending.client_id)
        if client is None:
            return error_page("The client is no longer registered.")
        try:
            async with throttle.attempt(conn, throttle.attempt_key("login", username, request), app.settings) \
                    as attempt:
                user = await authenticate_user(conn, username, str(form.get("password", "")))
                attempt.failed = user is None
        except throttle.TooManyFailures as refused:
            return login_page(urls.at("authorize/login"), str(form["form_token"]), client.name,
                              f"Too many failed sign-ins. Try again in {_duration(refused.retry_after)}.",
                              username, refused.retry_after)
        if user is None:
            return login_page(urls.at("authorize/login"), str(form["form_token"]), client.name,
                              "Wrong user name or password.", username)
        form_token = await _form_token(conn, app, urls, "consent", csrf, pending, user.username)
        return await _consent(conn, urls, form_token, client, user, pending, "")


def _duration(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return f"{seconds} seconds" if seconds < 120 else f"{minutes} minutes"


async def _consent(conn: AsyncConnection, urls: Endpoints, form_token: str, client: Client, user: User,
                   pending: Pending, name_filter: str, error: str | None = None) -> Response:
    patient_label, patients = None, None
    if user.patient is not None:
        patient_label = await _patient_label(conn, user.patient)
    elif pending.launch_patient is not None:
        patient_label = await _patient_label(conn, pending.launch_patient)
    elif "launch/patient" in pending.scopes:
        patients = await _patients(conn, name_filter)
    return consent_page(urls.at("authorize/consent"), form_token, client.name, user.username, pending.scopes,
                        patient_label, patients, name_filter, error)


async def consent(request: Request, app: AuthHost) -> Response:
    """POST /auth/authorize/consent: search patients, deny, or approve and redirect with a code."""
    try:
        claims, form, pending = await _posted_form(request, app, "consent")
    except InvalidToken as error:
        return error_page(str(error))
    urls = endpoints(request, app.settings)
    action = form.get("action")
    if action == "deny":
        return pending.redirect(303, error="access_denied", error_description="the user denied access")
    async with app.pool.connection() as conn:
        client = await get_client(conn, pending.client_id)
        user = await get_user(conn, claims.get("sub", ""))
        if client is None or user is None:
            return error_page("The client or the user is no longer registered.")
        form_token = str(form["form_token"])
        if action != "approve":
            return await _consent(conn, urls, form_token, client, user, pending, str(form.get("name", "")))
        chosen = tuple(scope for scope in pending.scopes if scope in form.getlist("scope"))
        if not chosen:
            return pending.redirect(303, error="access_denied", error_description="the user granted no scope")
        try:
            return await _finish(conn, pending, user, chosen, form.get("patient"), 303)
        except AuthorizeError as error:
            if error.error == "patient_required":
                return await _consent(conn, urls, form_token, client, user, pending, "", error.description)
            return pending.redirect(303, error=error.error, error_description=error.description)


async def _finish(conn: AsyncConnection, pending: Pending, user: User, scopes: tuple[str, ...],
                  chosen_patient: object, status: int) -> RedirectResponse:
    """Issue the code for what was approved and send the browser back to the client."""
    patient, encounter, banner = None, None, False
    if user.patient is not None:
        patient, banner = user.patient, not pending.ehr_launch
    elif pending.ehr_launch:
        patient, encounter = pending.launch_patient, pending.launch_encounter
    elif "launch/patient" in scopes:
        if not isinstance(chosen_patient, str) or not chosen_patient:
            raise AuthorizeError("patient_required", "Choose a patient.")
        if await _patient_label(conn, chosen_patient) is None:
            raise AuthorizeError("patient_required", "That patient does not exist.")
        patient, banner = chosen_patient, True
    grant = GrantedAccess(pending.client_id, user.username, scopes, patient, encounter, user.fhir_user, banner,
                          pending.nonce)
    code = await create_code(conn, grant, pending.redirect_uri, pending.code_challenge)
    return pending.redirect(status, code=code)


def _display_name(content: bytes | None) -> str:
    resource = orjson.loads(content) if content else {}
    for name in resource.get("name") or []:
        if isinstance(name, dict):
            text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
            if text:
                return text
    return "(no name)"


async def _patient_label(conn: AsyncConnection, patient_id: str) -> str | None:
    row = await (await conn.execute(
        "SELECT content FROM resource WHERE resource_type = 'Patient' AND fhir_id = %s AND NOT deleted",
        (patient_id,))).fetchone()
    return f"{_display_name(row[0])} (Patient/{patient_id})" if row else None


async def _patients(conn: AsyncConnection, name_filter: str) -> list[tuple[str, str]]:
    """Patients to pick from: the most recently updated, or those whose name contains the filter."""
    query = "SELECT r.fhir_id, r.content FROM resource r WHERE r.resource_type = 'Patient' AND NOT r.deleted "
    params: tuple = ()
    if name_filter.strip():
        query += ("AND EXISTS (SELECT 1 FROM search_string s WHERE s.resource_id = r.id "
                  "AND s.resource_type = 'Patient' AND s.param = 'name' AND s.value LIKE %s) ")
        escaped = normalize_string(name_filter.strip()).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params = (f"%{escaped}%",)
    rows = await (await conn.execute(query + f"ORDER BY r.last_updated DESC LIMIT {PATIENT_CHOICES}", params)
                  ).fetchall()
    return [(fhir_id, _display_name(content)) for fhir_id, content in rows]
