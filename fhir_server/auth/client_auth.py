"""Client authentication at the token, introspection and revocation endpoints.

`client_secret_basic` for confidential-symmetric clients, `private_key_jwt` (RS384 or ES384 assertions,
SMART Backend Services) for confidential-asymmetric ones, and a bare `client_id` for public clients.
"""

import base64
import binascii
import time
from dataclasses import dataclass
from urllib.parse import unquote

import httpx
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from psycopg import AsyncConnection

from fhir_server.auth.errors import OAuthError, invalid_client
from fhir_server.auth.registry import Client, checked_jwks, client_secret_matches, get_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300
CLOCK_SKEW = 5
JWKS_CACHE_SECONDS = 300
# A kid missing from a cached JWKS triggers a refetch, but not more often than this.
JWKS_REFETCH_SECONDS = 10
JWKS_MAX_BYTES = 256 * 1024


@dataclass(slots=True)
class _FetchedJWKS:
    keys: KeySet
    fetched_at: float


_jwks_by_uri: dict[str, _FetchedJWKS] = {}


async def authenticate_client(conn: AsyncConnection, form: dict[str, str], authorization: str | None,
                              audiences: tuple[str, ...]) -> Client:
    """The client making this request; `audiences` are the URLs an assertion may be addressed to."""
    if authorization and authorization[:6].lower() == "basic ":
        return await _basic(conn, authorization[6:])
    if "client_assertion" in form or "client_assertion_type" in form:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise invalid_client(f"client_assertion_type must be {ASSERTION_TYPE}")
        return await _assertion(conn, form.get("client_assertion", ""), audiences)
    client_id = form.get("client_id")
    client = await get_client(conn, client_id) if client_id else None
    if client is None:
        raise invalid_client("unknown client, or no client authentication")
    if client.confidential:
        raise invalid_client("this client is confidential and must authenticate")
    return client


def claimed_client_id(form: dict[str, str], authorization: str | None) -> str:
    """The client id a request claims (Basic user name, assertion issuer or `client_id`), unchecked: what
    failed authentications are counted under."""
    try:
        if authorization and authorization[:6].lower() == "basic ":
            return _basic_credentials(authorization[6:])[0]
        if "client_assertion" in form:
            issuer = _unverified_claims(form["client_assertion"]).get("iss")
            return issuer if isinstance(issuer, str) else ""
    except (OAuthError, JoseError, ValueError, UnicodeError):
        return ""
    return form.get("client_id", "")


def _basic_credentials(credentials: str) -> tuple[str, str]:
    try:
        client_id, _, secret = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client("malformed Basic credentials") from None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def _basic(conn: AsyncConnection, credentials: str) -> Client:
    client_id, secret = _basic_credentials(credentials)
    client = await get_client(conn, client_id)
    if client is None or client.client_type != "confidential-symmetric" or not client_secret_matches(client, secret):
        raise invalid_client("client authentication failed")
    return client


async def _assertion(conn: AsyncConnection, assertion: str, audiences: tuple[str, ...]) -> Client:
    try:
        header = extract_compact(assertion.encode()).protected
        claims = _unverified_claims(assertion)
    except (JoseError, ValueError, UnicodeError):
        raise invalid_client("client_assertion is not a JWT") from None
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise invalid_client(f"client_assertion must be signed with {' or '.join(ASSERTION_ALGORITHMS)}")
    client_id = claims.get("iss")
    client = await get_client(conn, client_id) if isinstance(client_id, str) else None
    if client is None or client.client_type != "confidential-asymmetric":
        raise invalid_client("client authentication failed")
    keys = await _client_keys(client, header.get("kid"))
    try:
        claims = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGORITHMS).claims
    except (JoseError, ValueError):
        raise invalid_client("client_assertion signature is invalid") from None
    _check_assertion_claims(claims, client.client_id, audiences)
    stored = await conn.execute(
        "WITH gone AS (DELETE FROM auth_assertion_jti WHERE expires_at < now()) "
        "INSERT INTO auth_assertion_jti (client_id, jti, expires_at) VALUES (%s, %s, to_timestamp(%s)) "
        "ON CONFLICT DO NOTHING", (client.client_id, claims["jti"], claims["exp"]))
    if stored.rowcount == 0:
        raise invalid_client("client_assertion jti was already used")
    return client


def _unverified_claims(assertion: str) -> dict:
    """The claims before the signature is checked: only to find out which client's keys to check it with."""
    claims = orjson.loads(extract_compact(assertion.encode()).payload)
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    return claims


def _check_assertion_claims(claims: dict, client_id: str, audiences: tuple[str, ...]) -> None:
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise invalid_client("client_assertion iss and sub must both be the client_id")
    audience = claims.get("aud")
    if not (audience in audiences or (isinstance(audience, list) and set(audience) & set(audiences))):
        raise invalid_client(f"client_assertion aud must be {audiences[0]}")
    now, exp = time.time(), claims.get("exp")
    if not isinstance(exp, int) or exp <= now - CLOCK_SKEW:
        raise invalid_client("client_assertion has expired or has no exp")
    if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
        raise invalid_client(f"client_assertion exp is more than {MAX_ASSERTION_LIFETIME} s ahead")
    not_before = claims.get("nbf")
    if isinstance(not_before, int) and not_before > now + CLOCK_SKEW:
        raise invalid_client("client_assertion is not valid yet")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise invalid_client("client_assertion needs a jti")


async def _client_keys(client: Client, kid: object) -> KeySet:
    if client.jwks is not None:
        return KeySet.import_key_set(client.jwks)
    fetched = _jwks_by_uri.get(client.jwks_uri)
    now = time.monotonic()
    stale = fetched is None or now - fetched.fetched_at > JWKS_CACHE_SECONDS or (
        isinstance(kid, str) and not any(key.kid == kid for key in fetched.keys)
        and now - fetched.fetched_at > JWKS_REFETCH_SECONDS)
    if stale:
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=False) as http:
                response = await http.get(client.jwks_uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > JWKS_MAX_BYTES:
                raise ValueError("the JWKS is too large")
            fetched = _jwks_by_uri[client.jwks_uri] = _FetchedJWKS(
                KeySet.import_key_set(checked_jwks(response.json())), now)
        except (httpx.HTTPError, ValueError, JoseError) as error:
            if fetched is None:
                raise invalid_client(f"the client's JWKS could not be fetched: {type(error).__name__}") from None
    return fetched.keys


def require_confidential(client: Client) -> Client:
    if not client.confidential:
        raise OAuthError("invalid_client", "only confidential clients may use this endpoint", 401)
    return client
