"""Introspection (RFC 7662, authenticated clients only) and revocation (RFC 7009) of access tokens."""

import httpx
import psycopg

from fhir_server.auth.registry import add_client


async def backend_token(aconn: psycopg.AsyncConnection, origin: str) -> tuple[tuple[str, str], str]:
    backend, secret = await add_client(aconn, "Resource server", "confidential-symmetric", [], ["system/*.rs"])
    response = httpx.post(origin + "/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs"},
                          auth=(backend.client_id, secret))
    return (backend.client_id, secret), response.json()["access_token"]


async def test_introspection(aconn: psycopg.AsyncConnection, origin: str) -> None:
    auth, token = await backend_token(aconn, origin)
    active = httpx.post(origin + "/auth/introspect", data={"token": token}, auth=auth)
    assert active.status_code == 200
    body = active.json()
    assert body["active"] is True and body["client_id"] == auth[0] and body["scope"] == "system/*.rs"
    assert body["aud"] == origin + "/fhir" and body["token_type"] == "Bearer" and body["exp"] > 0
    for garbage in ("", "not-a-token", token[:-5] + "AAAAA", token.replace(".", "x", 1)):
        assert httpx.post(origin + "/auth/introspect", data={"token": garbage}, auth=auth).json() == \
            {"active": False}


async def test_introspection_needs_client_authentication(aconn: psycopg.AsyncConnection, origin: str) -> None:
    auth, token = await backend_token(aconn, origin)
    assert httpx.post(origin + "/auth/introspect", data={"token": token}).status_code == 401
    public, _ = await add_client(aconn, "Public", "public", ["https://app.example/cb"], [])
    response = httpx.post(origin + "/auth/introspect", data={"token": token, "client_id": public.client_id})
    assert response.status_code == 401
    assert httpx.post(origin + "/auth/introspect", data={"token": token}, auth=(auth[0], "wrong")).status_code == 401


async def test_revoked_access_token_is_inactive(aconn: psycopg.AsyncConnection, origin: str) -> None:
    auth, token = await backend_token(aconn, origin)
    other_auth, other_token = await backend_token(aconn, origin)
    # A client cannot revoke another client's token; garbage is answered like success (RFC 7009 §2.2).
    assert httpx.post(origin + "/auth/revoke", data={"token": other_token}, auth=auth).status_code == 200
    assert httpx.post(origin + "/auth/revoke", data={"token": "garbage"}, auth=auth).status_code == 200
    assert httpx.post(origin + "/auth/introspect", data={"token": other_token}, auth=auth).json()["active"]
    assert httpx.post(origin + "/auth/revoke", data={"token": token}, auth=auth).status_code == 200
    assert httpx.post(origin + "/auth/introspect", data={"token": token}, auth=auth).json() == {"active": False}
    rows = await (await aconn.execute("SELECT count(*) FROM auth_revoked_token WHERE expires_at > now()")).fetchone()
    assert rows[0] == 1
