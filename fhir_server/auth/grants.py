"""What a user or client was granted, and where grants wait: scope granting, codes, refresh tokens, launches."""

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from fhir_server.auth.errors import OAuthError
from fhir_server.auth.registry import secret_digest
from fhir_server.auth.scopes import parse_scopes

CODE_LIFETIME = 60
LAUNCH_LIFETIME = 3600
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


@dataclass(frozen=True, slots=True)
class GrantedAccess:
    """What an access token will say: carried from consent to code to token, and along refresh tokens."""

    client_id: str
    username: str | None
    scopes: tuple[str, ...]
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    need_patient_banner: bool = False
    nonce: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GrantedAccess":
        return cls(**{**data, "scopes": tuple(data["scopes"])})

    @property
    def refreshable(self) -> bool:
        return self.username is not None and not REFRESH_SCOPES.isdisjoint(self.scopes)


def scope_covers(allowed: str, requested: str) -> bool:
    """Whether a client allowed `allowed` may be granted `requested` (`user/*.cruds` covers `user/Patient.rs`
    and `user/Patient.read`; a scope limited by a query covers only the same query)."""
    if allowed == requested:
        return True
    wide, narrow = parse_scopes([allowed]), parse_scopes([requested])
    if not wide or not narrow:
        return False
    wide, narrow = wide[0], narrow[0]
    return (wide.context == narrow.context and wide.resource_type in ("*", narrow.resource_type)
            and narrow.permissions <= wide.permissions and wide.filters in ((), narrow.filters))


def grantable(requested: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes that the allowed ones cover, in request order, without duplicates."""
    allowed = list(allowed)
    return tuple(dict.fromkeys(scope for scope in requested if any(scope_covers(a, scope) for a in allowed)))


def is_system_scope(scope: str) -> bool:
    return scope.startswith("system/")


async def create_code(conn: AsyncConnection, grant: GrantedAccess, redirect_uri: str,
                      code_challenge: str) -> str:
    code = secrets.token_urlsafe(32)
    await conn.execute(
        "WITH gone AS (DELETE FROM auth_code WHERE expires_at < now()) "
        "INSERT INTO auth_code (code_hash, client_id, redirect_uri, code_challenge, grant_json, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
        (secret_digest(code), grant.client_id, redirect_uri, code_challenge, Jsonb(grant.to_json()), CODE_LIFETIME))
    return code


async def redeem_code(conn: AsyncConnection, code: str) -> tuple[GrantedAccess, str, str] | None:
    """The grant, redirect URI and PKCE challenge of an unexpired code, which is used up by this call."""
    row = await (await conn.execute(
        "DELETE FROM auth_code WHERE code_hash = %s RETURNING grant_json, redirect_uri, code_challenge, "
        "expires_at > now()", (secret_digest(code),))).fetchone()
    if row is None or not row[3]:
        return None
    return GrantedAccess.from_json(row[0]), row[1], row[2]


@dataclass(frozen=True, slots=True)
class RefreshLifetimes:
    online: int
    offline: int


async def create_refresh_token(conn: AsyncConnection, grant: GrantedAccess, lifetimes: RefreshLifetimes,
                               family: uuid.UUID | None = None) -> str:
    """A new refresh token; `family` continues a chain. An offline token lives `lifetimes.offline` from now;
    an online chain keeps the expiry of its first token, `lifetimes.online` after the login."""
    token = secrets.token_urlsafe(32)
    offline = "offline_access" in grant.scopes
    lifetime = lifetimes.offline if offline else lifetimes.online
    if family is None or offline:
        expires = "now() + make_interval(secs => %(lifetime)s)"
    else:
        expires = "(SELECT min(expires_at) FROM auth_refresh_token WHERE family = %(family)s)"
    await conn.execute(
        "INSERT INTO auth_refresh_token (token_hash, family, client_id, username, grant_json, offline, expires_at) "
        f"VALUES (%(hash)s, %(family)s, %(client_id)s, %(username)s, %(grant)s, %(offline)s, {expires})",
        {"hash": secret_digest(token), "family": family or uuid.uuid4(), "client_id": grant.client_id,
         "username": grant.username, "grant": Jsonb(grant.to_json()), "offline": offline, "lifetime": lifetime})
    return token


async def rotate_refresh_token(conn: AsyncConnection, token: str, client_id: str, scopes: list[str] | None,
                               lifetimes: RefreshLifetimes) -> tuple[GrantedAccess, str]:
    """Use a refresh token up and return its grant (narrowed to `scopes`, if given) with its successor.

    A token presented a second time means that it leaked: the whole chain is revoked (OAuth 2.1 §6.1).
    """
    failure = None
    async with conn.transaction():
        row = await (await conn.execute(
            "SELECT family, client_id, grant_json, used, revoked, expires_at > now() FROM auth_refresh_token "
            "WHERE token_hash = %s FOR UPDATE", (secret_digest(token),))).fetchone()
        if row is None or row[1] != client_id:
            failure = OAuthError("invalid_grant", "unknown refresh token")
        elif row[3] or row[4]:
            if row[3]:
                await conn.execute("UPDATE auth_refresh_token SET revoked = true WHERE family = %s", (row[0],))
            failure = OAuthError("invalid_grant", "the refresh token was already used or revoked")
        elif not row[5]:
            failure = OAuthError("invalid_grant", "the refresh token has expired")
        elif scopes is not None and not set(scopes) <= set(row[2]["scopes"]):
            failure = OAuthError("invalid_scope", "a refresh cannot add scopes to the original grant")
        else:
            family, grant = row[0], GrantedAccess.from_json(row[2])
            await conn.execute("UPDATE auth_refresh_token SET used = true WHERE token_hash = %s",
                               (secret_digest(token),))
            await conn.execute("DELETE FROM auth_refresh_token WHERE expires_at < now() - interval '1 day'")
            # The successor keeps the original scopes (RFC 6749 §6); only this access token is narrowed.
            successor = await create_refresh_token(conn, grant, lifetimes, family)
    if failure is not None:
        raise failure
    if scopes is not None:
        grant = replace(grant, scopes=tuple(scope for scope in grant.scopes if scope in scopes))
    return grant, successor


async def refresh_token_grant(conn: AsyncConnection, token: str) -> tuple[GrantedAccess, int] | None:
    """The grant and expiry (epoch seconds) of a refresh token that is still usable."""
    row = await (await conn.execute(
        "SELECT grant_json, extract(epoch FROM expires_at)::bigint FROM auth_refresh_token WHERE token_hash = %s "
        "AND NOT used AND NOT revoked AND expires_at > now()", (secret_digest(token),))).fetchone()
    return (GrantedAccess.from_json(row[0]), row[1]) if row else None


async def revoke_refresh_token(conn: AsyncConnection, token: str, client_id: str) -> bool:
    """Revoke a refresh token of this client and the chain it belongs to."""
    revoked = await conn.execute(
        "UPDATE auth_refresh_token SET revoked = true WHERE family = (SELECT family FROM auth_refresh_token "
        "WHERE token_hash = %s AND client_id = %s)", (secret_digest(token), client_id))
    return revoked.rowcount > 0


async def create_launch(conn: AsyncConnection, patient: str | None, encounter: str | None = None) -> str:
    """An EHR launch id bound to a patient (and encounter) context, for the `launch` parameter."""
    launch_id = secrets.token_urlsafe(16)
    await conn.execute(
        "WITH gone AS (DELETE FROM auth_launch WHERE expires_at < now()) "
        "INSERT INTO auth_launch (launch_id, patient, encounter, expires_at) "
        "VALUES (%s, %s, %s, now() + make_interval(secs => %s))", (launch_id, patient, encounter, LAUNCH_LIFETIME))
    return launch_id


async def launch_context(conn: AsyncConnection, launch_id: str) -> tuple[str | None, str | None] | None:
    row = await (await conn.execute(
        "SELECT patient, encounter FROM auth_launch WHERE launch_id = %s AND expires_at > now()",
        (launch_id,))).fetchone()
    return (row[0], row[1]) if row else None
