"""Registered clients and users: adding, listing, removing, and checking their secrets and passwords."""

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from joserfc.jwk import KeySet
from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")
PRIVATE_KEY_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})

_passwords = PasswordHasher()
# Checked when the user does not exist, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = _passwords.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    client_type: str
    redirect_uris: list[str]
    scopes: list[str]
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    pre_approved_user: str | None = None
    secret_hash: str | None = field(default=None, repr=False)

    @property
    def confidential(self) -> bool:
        return self.client_type != "public"


@dataclass(frozen=True, slots=True)
class User:
    username: str
    fhir_user: str | None = None
    patient: str | None = None
    password_hash: str = field(default="", repr=False)


def secret_digest(secret: str) -> str:
    """Digest of a long random string (client secret, code, refresh token): a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def checked_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """A client's public JWKS, refused if it is not one or if it carries private key material."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWKS is a JSON object {"keys": [...]} with at least one key')
    if any(PRIVATE_KEY_MEMBERS & set(key) for key in keys if isinstance(key, dict)):
        raise ValueError("the JWKS holds private key material; register the public keys only")
    try:
        KeySet.import_key_set(jwks)
    except Exception as error:
        raise ValueError(f"the JWKS cannot be read: {error}") from None
    return jwks


async def add_client(conn: AsyncConnection, name: str, client_type: str, redirect_uris: list[str],
                     scopes: list[str], jwks: dict[str, Any] | None = None, jwks_uri: str | None = None,
                     pre_approved_user: str | None = None, client_id: str | None = None) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret (confidential-symmetric only; shown once, stored hashed)."""
    if client_type not in CLIENT_TYPES:
        raise ValueError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    if client_type == "confidential-asymmetric":
        if (jwks is None) == (jwks_uri is None):
            raise ValueError("a confidential-asymmetric client needs exactly one of a JWKS or a JWKS URI")
    elif jwks is not None or jwks_uri is not None:
        raise ValueError("only confidential-asymmetric clients authenticate with keys")
    if client_type == "public" and not redirect_uris:
        raise ValueError("a public client needs at least one redirect URI")
    if jwks is not None:
        checked_jwks(jwks)
    if pre_approved_user is not None and await get_user(conn, pre_approved_user) is None:
        raise ValueError(f"no user {pre_approved_user!r}")
    secret = secrets.token_urlsafe(32) if client_type == "confidential-symmetric" else None
    client = Client(client_id or secrets.token_urlsafe(16), name, client_type, list(redirect_uris), list(scopes),
                    jwks, jwks_uri, pre_approved_user, secret_digest(secret) if secret else None)
    inserted = await conn.execute(
        "INSERT INTO auth_client (client_id, name, client_type, secret_hash, redirect_uris, scopes, jwks, jwks_uri, "
        "pre_approved_user) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (client.client_id, name, client_type, client.secret_hash, client.redirect_uris, client.scopes,
         Jsonb(jwks) if jwks is not None else None, jwks_uri, pre_approved_user))
    if inserted.rowcount == 0:
        raise ValueError(f"client id {client.client_id!r} is taken")
    return client, secret


_CLIENT_COLUMNS = ("client_id, name, client_type, redirect_uris, scopes, jwks, jwks_uri, pre_approved_user, "
                   "secret_hash")


async def get_client(conn: AsyncConnection, client_id: str) -> Client | None:
    async with conn.cursor(row_factory=class_row(Client)) as cursor:
        await cursor.execute(f"SELECT {_CLIENT_COLUMNS} FROM auth_client WHERE client_id = %s", (client_id,))
        return await cursor.fetchone()


async def list_clients(conn: AsyncConnection) -> list[Client]:
    async with conn.cursor(row_factory=class_row(Client)) as cursor:
        await cursor.execute(f"SELECT {_CLIENT_COLUMNS} FROM auth_client ORDER BY name, client_id")
        return await cursor.fetchall()


async def remove_client(conn: AsyncConnection, client_id: str) -> bool:
    """Remove a client with its codes and refresh tokens; its access tokens live out their short lifetime."""
    return (await conn.execute("DELETE FROM auth_client WHERE client_id = %s", (client_id,))).rowcount > 0


def client_secret_matches(client: Client, secret: str) -> bool:
    return client.secret_hash is not None and hmac.compare_digest(client.secret_hash, secret_digest(secret))


async def add_user(conn: AsyncConnection, username: str, password: str, fhir_user: str | None = None,
                   patient: str | None = None) -> User:
    """Add a user; one bound to a patient gets that patient as context (and as fhirUser unless given)."""
    if not username or not password:
        raise ValueError("a user needs a name and a non-empty password")
    if fhir_user is None and patient is not None:
        fhir_user = f"Patient/{patient}"
    if fhir_user is not None and (fhir_user.count("/") != 1 or not all(fhir_user.split("/"))):
        raise ValueError("--fhir-user is a relative reference such as Practitioner/123")
    password_hash = await asyncio.to_thread(_passwords.hash, password)
    inserted = await conn.execute(
        "INSERT INTO auth_user (username, password_hash, fhir_user, patient) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING", (username, password_hash, fhir_user, patient))
    if inserted.rowcount == 0:
        raise ValueError(f"user {username!r} exists")
    return User(username, fhir_user, patient, password_hash)


async def get_user(conn: AsyncConnection, username: str) -> User | None:
    async with conn.cursor(row_factory=class_row(User)) as cursor:
        await cursor.execute("SELECT username, fhir_user, patient, password_hash FROM auth_user WHERE username = %s",
                             (username,))
        return await cursor.fetchone()


async def list_users(conn: AsyncConnection) -> list[User]:
    async with conn.cursor(row_factory=class_row(User)) as cursor:
        await cursor.execute("SELECT username, fhir_user, patient, password_hash FROM auth_user ORDER BY username")
        return await cursor.fetchall()


async def remove_user(conn: AsyncConnection, username: str) -> bool:
    """Remove a user with their refresh tokens."""
    return (await conn.execute("DELETE FROM auth_user WHERE username = %s", (username,))).rowcount > 0


async def authenticate_user(conn: AsyncConnection, username: str, password: str) -> User | None:
    """The user if the password is theirs; argon2 runs off the event loop (it is slow by design)."""
    user = await get_user(conn, username)

    def verify() -> bool:
        try:
            return _passwords.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False

    return user if await asyncio.to_thread(verify) and user is not None else None
