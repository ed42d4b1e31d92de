"""verify_access_token as the request path calls it, and signing-key rotation."""

import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from joserfc.jws import extract_compact
from psycopg_pool import AsyncConnectionPool

from fhir_server.auth.grants import GrantedAccess
from fhir_server.auth.keys import jwks, sign, signing_key
from fhir_server.auth.tokens import (ACCESS_TOKEN_TYPE, InvalidToken, access_token_claims, issue_tokens,
                                     revoke_access_token, verify_access_token)
from fhir_server.settings import Settings

BASE = "https://ehr.example/fhir"
SETTINGS = Settings(database_url="unused")
GRANT = GrantedAccess("app", "alice", ("openid", "fhirUser", "patient/*.rs"), patient="p1",
                      fhir_user="Practitioner/d1")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        yield pool


async def issue(pool: AsyncConnectionPool, grant: GrantedAccess = GRANT, settings: Settings = SETTINGS) -> dict:
    async with pool.connection() as conn:
        return await issue_tokens(conn, grant, BASE, settings)


async def test_valid_token(pool: AsyncConnectionPool) -> None:
    token = (await issue(pool))["access_token"]
    access = await verify_access_token(pool, token, BASE)
    assert access.client_id == "app" and access.subject == "alice" and access.patient == "p1"
    assert access.scopes == ("openid", "fhirUser", "patient/*.rs") and access.fhir_user == "Practitioner/d1"
    assert access.tenant is None and access.expires_at > time.time()
    # The second verification is served from memory.
    assert await verify_access_token(pool, token, BASE) is access
    backend = await verify_access_token(
        pool, (await issue(pool, GrantedAccess("bulk", None, ("system/*.rs",))))["access_token"], BASE)
    assert backend.subject is None and backend.client_id == "bulk"


async def test_refused_tokens(pool: AsyncConnectionPool) -> None:
    issued = await issue(pool)
    with pytest.raises(InvalidToken, match="another server"):
        await verify_access_token(pool, issued["access_token"], "https://other.example/fhir")
    with pytest.raises(InvalidToken, match="not an at\\+jwt"):
        await verify_access_token(pool, issued["id_token"], BASE)  # an id token is no access token
    for garbage in ("", "abc", "a.b.c", "x" * 10_000, issued["access_token"][:-3] + "abc"):
        with pytest.raises(InvalidToken):
            await verify_access_token(pool, garbage, BASE)
    async with pool.connection() as conn:
        kid, key = await signing_key(conn, 30, 300)
    expired = access_token_claims(GRANT, BASE, 300)
    expired["exp"] = int(time.time()) - 1
    with pytest.raises(InvalidToken, match="expired"):
        await verify_access_token(pool, sign(expired, ACCESS_TOKEN_TYPE, kid, key), BASE)
    unknown_kid = sign(access_token_claims(GRANT, BASE, 300), ACCESS_TOKEN_TYPE, "no-such-kid", key)
    with pytest.raises(InvalidToken, match="not signed by a key of this server"):
        await verify_access_token(pool, unknown_kid, BASE)


async def test_expiry_is_checked_on_cached_tokens(pool: AsyncConnectionPool) -> None:
    token = (await issue(pool, settings=SETTINGS.model_copy(update={"auth_token_lifetime": 1})))["access_token"]
    await verify_access_token(pool, token, BASE)
    time.sleep(1.1)
    with pytest.raises(InvalidToken, match="expired"):
        await verify_access_token(pool, token, BASE)


async def test_revocation(pool: AsyncConnectionPool) -> None:
    token = (await issue(pool))["access_token"]
    access = await verify_access_token(pool, token, BASE)
    async with pool.connection() as conn:
        await revoke_access_token(pool, conn, access.jti, access.expires_at)
    with pytest.raises(InvalidToken, match="revoked"):
        await verify_access_token(pool, token, BASE)


async def test_revocation_by_another_process_is_seen_within_the_refresh_interval(
        pool: AsyncConnectionPool, aconn: psycopg.AsyncConnection) -> None:
    token = (await issue(pool))["access_token"]
    access = await verify_access_token(pool, token, BASE)
    await aconn.execute("INSERT INTO auth_revoked_token VALUES (%s, to_timestamp(%s))",
                        (access.jti, access.expires_at))
    time.sleep(2.1)
    with pytest.raises(InvalidToken, match="revoked"):
        await verify_access_token(pool, token, BASE)


async def test_key_rotation_keeps_old_tokens_verifiable(pool: AsyncConnectionPool,
                                                        aconn: psycopg.AsyncConnection) -> None:
    old = (await issue(pool))["access_token"]
    await aconn.execute("UPDATE auth_signing_key SET created_at = now() - interval '31 days'")
    new = (await issue(pool))["access_token"]
    old_kid, new_kid = (token_kid(token) for token in (old, new))
    assert old_kid != new_kid
    assert (await verify_access_token(pool, old, BASE)).jti != (await verify_access_token(pool, new, BASE)).jti
    published = {key["kid"] for key in (await jwks(aconn))["keys"]}
    assert published == {old_kid, new_kid}
    # Once everything the old key signed has expired, it leaves the JWKS.
    await aconn.execute("UPDATE auth_signing_key SET verifiable_until = now() - interval '1 second' "
                        "WHERE kid = %s", (old_kid,))
    assert {key["kid"] for key in (await jwks(aconn))["keys"]} == {new_kid}
    assert {key["kid"] for key in (await jwks(aconn))["keys"]} == {token_kid((await issue(pool))["access_token"])}


def token_kid(token: str) -> str:
    return extract_compact(token.encode()).protected["kid"]


async def test_no_private_key_material_is_published(aconn: psycopg.AsyncConnection,
                                                    pool: AsyncConnectionPool) -> None:
    await issue(pool)
    (key,) = (await jwks(aconn))["keys"]
    assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}
