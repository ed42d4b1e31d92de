"""Access and id tokens: issuing them as signed JWTs, and verifying them on every request.

Verification works from memory: public keys are cached per pool (reloaded from the database only when a
token names an unknown `kid`), verified tokens are remembered until they expire, and the set of revoked
`jti`s is reloaded from the database at most every `REVOCATION_REFRESH_SECONDS`. A revocation therefore
takes effect at once in the process that received it and within that many seconds in every other process.
"""

import asyncio
import secrets
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import extract_compact
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fhir_server.auth.grants import GrantedAccess
from fhir_server.auth.keys import SIGNING_ALGORITHM, published_keys, sign, signing_key
from fhir_server.settings import Settings
from fhir_server.storage import tenants

ACCESS_TOKEN_TYPE = "at+jwt"
REVOCATION_REFRESH_SECONDS = 2.0
# A kid found in no key is not looked up again for this long, so repeated garbage cannot hammer the database.
KEY_RELOAD_SECONDS = 1.0
_UNKNOWN_KIDS_SIZE = 1_000
MAX_TOKEN_LENGTH = 8192
_VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class AccessToken:
    client_id: str
    subject: str | None        # user name, or None for backend clients
    scopes: tuple[str, ...]
    patient: str | None
    fhir_user: str | None      # e.g. "Practitioner/123"
    tenant: str | None
    jti: str
    expires_at: int


class InvalidToken(Exception):
    """Why a token was refused; the message is safe to show and never includes the token."""


def access_token_claims(grant: GrantedAccess, issuer: str, lifetime: int) -> dict[str, Any]:
    now = int(time.time())
    tenant = tenants.current.get()
    claims = {"iss": issuer, "aud": issuer, "sub": grant.username or grant.client_id, "client_id": grant.client_id,
              "scope": " ".join(grant.scopes), "tenant": tenant.name if tenant is not None else None,
              "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + lifetime}
    if grant.username is not None:
        claims["username"] = grant.username
    for name, value in (("patient", grant.patient), ("encounter", grant.encounter), ("fhirUser", grant.fhir_user)):
        if value is not None:
            claims[name] = value
    return claims


async def issue_tokens(conn: AsyncConnection, grant: GrantedAccess, issuer: str,
                       settings: Settings) -> dict[str, Any]:
    """The signed access token, and an OpenID Connect id token when `openid` and `fhirUser` were granted."""
    kid, key = await signing_key(conn, settings.auth_key_rotation_days, settings.auth_token_lifetime)
    claims = access_token_claims(grant, issuer, settings.auth_token_lifetime)
    issued = {"access_token": sign(claims, ACCESS_TOKEN_TYPE, kid, key), "expires_in": settings.auth_token_lifetime}
    if {"openid", "fhirUser"} <= set(grant.scopes) and grant.username is not None:
        id_claims = {"iss": issuer, "sub": grant.username, "aud": grant.client_id, "iat": claims["iat"],
                     "exp": claims["exp"]}
        if grant.fhir_user is not None:
            id_claims["fhirUser"] = f"{issuer}/{grant.fhir_user}"
        if grant.nonce is not None:
            id_claims["nonce"] = grant.nonce
        issued["id_token"] = sign(id_claims, "JWT", kid, key)
    return issued


@dataclass(slots=True)
class _Verifier:
    """What one pool's verifications share: the public keys, verified tokens, and revoked jtis."""

    keys: dict[str, RSAKey] = field(default_factory=dict)
    unknown_kids: dict[str, float] = field(default_factory=dict)
    verified: dict[tuple[str, str], AccessToken] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)
    revoked_loaded_at: float = float("-inf")
    key_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_verifiers: "weakref.WeakKeyDictionary[AsyncConnectionPool, dict[str | None, _Verifier]]" = \
    weakref.WeakKeyDictionary()


def _verifier(pool: AsyncConnectionPool) -> _Verifier:
    """The verifier of the pool's current tenant: each tenant has its own keys and revocations."""
    tenant = tenants.current.get()
    per_tenant = _verifiers.setdefault(pool, {})
    key = tenant.schema if tenant is not None else None
    verifier = per_tenant.get(key)
    if verifier is None:
        verifier = per_tenant[key] = _Verifier()
    return verifier


async def verification_key(pool: AsyncConnectionPool, kid: str) -> RSAKey | None:
    """The public key with this kid, reloading the keys when it is not known yet (a key made by another
    process); a kid that is still unknown after a reload is not looked up again for a while."""
    verifier = _verifier(pool)
    key = verifier.keys.get(kid)
    if key is None and time.monotonic() - verifier.unknown_kids.get(kid, float("-inf")) >= KEY_RELOAD_SECONDS:
        async with verifier.key_lock:
            if kid not in verifier.keys:
                async with pool.connection() as conn:
                    verifier.keys = await published_keys(conn)
        key = verifier.keys.get(kid)
        if key is None:
            if len(verifier.unknown_kids) >= _UNKNOWN_KIDS_SIZE:
                verifier.unknown_kids.clear()
            verifier.unknown_kids[kid] = time.monotonic()
    return key


async def verify_signed(pool: AsyncConnectionPool, token: str, token_type: str) -> dict[str, Any]:
    """The claims of a JWT of this `typ` signed by one of our keys; expiry is the caller's to check."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("the token is too long")
    try:
        header = extract_compact(token.encode()).protected
    except (JoseError, ValueError, UnicodeError):
        raise InvalidToken("the token is not a JWT") from None
    if header.get("typ") != token_type or header.get("alg") != SIGNING_ALGORITHM:
        raise InvalidToken(f"the token is not an {token_type} signed with {SIGNING_ALGORITHM}")
    kid = header.get("kid")
    key = await verification_key(pool, kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken("the token was not signed by a key of this server")
    try:
        claims = jwt.decode(token, key, algorithms=[SIGNING_ALGORITHM]).claims
    except (JoseError, ValueError):
        raise InvalidToken("the token signature is invalid") from None
    return claims


async def _refresh_revoked(pool: AsyncConnectionPool, verifier: _Verifier) -> None:
    now = time.monotonic()
    if now - verifier.revoked_loaded_at < REVOCATION_REFRESH_SECONDS:
        return
    # Claimed before the query, so concurrent requests do not all reload.
    verifier.revoked_loaded_at = now
    async with pool.connection() as conn:
        rows = await (await conn.execute(
            "SELECT jti, extract(epoch FROM expires_at)::bigint FROM auth_revoked_token WHERE expires_at > now()"
        )).fetchall()
    verifier.revoked = dict(rows)


async def verify_access_token(pool: AsyncConnectionPool, token: str, audience: str) -> AccessToken:
    """The access token's grant, or InvalidToken: signature, `typ`, expiry, issuer, audience, revocation."""
    verifier = _verifier(pool)
    now = int(time.time())
    access = verifier.verified.get((token, audience))
    if access is None:
        claims = await verify_signed(pool, token, ACCESS_TOKEN_TYPE)
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now:
            raise InvalidToken("the token has expired")
        if claims.get("iss") != audience or claims.get("aud") != audience:
            raise InvalidToken("the token was issued for another server")
        tenant = tenants.current.get()
        if claims.get("tenant") != (tenant.name if tenant is not None else None):
            raise InvalidToken("the token was issued for another tenant")
        try:
            access = AccessToken(client_id=claims["client_id"], subject=claims.get("username"),
                                 scopes=tuple(claims["scope"].split()), patient=claims.get("patient"),
                                 fhir_user=claims.get("fhirUser"), tenant=claims.get("tenant"), jti=claims["jti"],
                                 expires_at=exp)
        except (KeyError, AttributeError):
            raise InvalidToken("the token lacks required claims") from None
        if len(verifier.verified) >= _VERIFIED_CACHE_SIZE:
            verifier.verified = {key: value for key, value in verifier.verified.items() if value.expires_at > now}
            if len(verifier.verified) >= _VERIFIED_CACHE_SIZE:
                verifier.verified.clear()
        verifier.verified[(token, audience)] = access
    elif access.expires_at <= now:
        del verifier.verified[(token, audience)]
        raise InvalidToken("the token has expired")
    await _refresh_revoked(pool, verifier)
    if access.jti in verifier.revoked:
        raise InvalidToken("the token has been revoked")
    return access


async def revoke_access_token(pool: AsyncConnectionPool, conn: AsyncConnection, jti: str, expires_at: int) -> None:
    """Record a revoked access token until its expiry; this process stops accepting it at once."""
    await conn.execute(
        "WITH gone AS (DELETE FROM auth_revoked_token WHERE expires_at < now()) "
        "INSERT INTO auth_revoked_token (jti, expires_at) VALUES (%s, to_timestamp(%s)) ON CONFLICT DO NOTHING",
        (jti, expires_at))
    _verifier(pool).revoked[jti] = expires_at
