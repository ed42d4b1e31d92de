"""Signing keys: kept in the database, rotated after a configured age, published as a JWKS."""

import asyncio
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

SIGNING_ALGORITHM = "RS256"
KEY_SIZE = 2048
# The longest-lived thing signed with these keys besides access and id tokens: the authorize form token.
FORM_TOKEN_LIFETIME = 600
# Slack for clock skew between processes when deciding that nothing signed by a retired key is still valid.
RETIREMENT_SLACK = 60
_ROTATION_LOCK = 815004

_ACTIVE_KEY = (
    "SELECT kid, private_jwk, created_at < now() - make_interval(secs => %s) AS stale FROM auth_signing_key "
    "WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1"
)
_PUBLISHED_KEYS = (
    "SELECT kid, public_jwk FROM auth_signing_key WHERE verifiable_until IS NULL OR verifiable_until > now() "
    "ORDER BY created_at DESC"
)

# Parsing a private key costs about a millisecond; signing happens on every token request.
_private_keys: dict[str, RSAKey] = {}


async def signing_key(conn: AsyncConnection, rotation_days: float, token_lifetime: int) -> tuple[str, RSAKey]:
    """The key to sign with now, making a new one first if there is none or the newest is too old."""
    rotation_seconds = rotation_days * 86400
    row = await (await conn.execute(_ACTIVE_KEY, (rotation_seconds,))).fetchone()
    if row is None or row[2]:
        row = await _rotate(conn, rotation_seconds, token_lifetime)
    kid, private_jwk = row[0], row[1]
    key = _private_keys.get(kid)
    if key is None:
        key = _private_keys[kid] = RSAKey.import_key(private_jwk)
    return kid, key


async def _rotate(conn: AsyncConnection, rotation_seconds: float, token_lifetime: int) -> tuple:
    key = await asyncio.to_thread(RSAKey.generate_key, KEY_SIZE, None, True)
    async with conn.transaction():
        # Several server processes may notice the stale key at once; only the first makes a new one.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ROTATION_LOCK,))
        row = await (await conn.execute(_ACTIVE_KEY, (rotation_seconds,))).fetchone()
        if row is not None and not row[2]:
            return row
        kid = key.thumbprint()
        await conn.execute(
            "UPDATE auth_signing_key SET retired_at = now(), verifiable_until = now() + make_interval(secs => %s) "
            "WHERE retired_at IS NULL", (max(token_lifetime, FORM_TOKEN_LIFETIME) + RETIREMENT_SLACK,))
        await conn.execute("DELETE FROM auth_signing_key WHERE verifiable_until < now()")
        private_jwk = key.as_dict(private=True)
        await conn.execute(
            "INSERT INTO auth_signing_key (kid, alg, private_jwk, public_jwk) VALUES (%s, %s, %s, %s)",
            (kid, SIGNING_ALGORITHM, Jsonb(private_jwk), Jsonb(key.as_dict(private=False))))
    return kid, private_jwk, False


async def published_keys(conn: AsyncConnection) -> dict[str, RSAKey]:
    """Every public key that may still have valid tokens (or form tokens) signed with it, by kid."""
    rows = await (await conn.execute(_PUBLISHED_KEYS)).fetchall()
    return {kid: RSAKey.import_key(public_jwk) for kid, public_jwk in rows}


async def jwks(conn: AsyncConnection) -> dict[str, Any]:
    rows = await (await conn.execute(_PUBLISHED_KEYS)).fetchall()
    return {"keys": [{**public_jwk, "kid": kid, "alg": SIGNING_ALGORITHM, "use": "sig"} for kid, public_jwk in rows]}


def sign(claims: dict[str, Any], token_type: str, kid: str, key: RSAKey) -> str:
    return jwt.encode({"alg": SIGNING_ALGORITHM, "kid": kid, "typ": token_type}, claims, key,
                      algorithms=[SIGNING_ALGORITHM])
