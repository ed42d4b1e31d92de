"""Refresh tokens: rotation on use, reuse detection, narrowing, revocation, offline and online lifetimes."""

import httpx
import psycopg
import pytest

from fhir_server.auth.registry import add_client, add_user
from tests.auth.conftest import REDIRECT_URI, authorize_url, exchange_code, pkce, redirect_params


async def tokens_for(aconn: psycopg.AsyncConnection, origin: str, scope: str) -> tuple[str, dict]:
    """A pre-approved public client's first token response for `scope`."""
    await add_user(aconn, "alice", "wonderland")
    registered, _ = await add_client(aconn, "App", "public", [REDIRECT_URI], scope.split(),
                                     pre_approved_user="alice")
    verifier, challenge = pkce()
    with httpx.Client(follow_redirects=False) as http:
        code = redirect_params(http.get(authorize_url(origin, registered.client_id, scope, challenge)))["code"]
        response = exchange_code(http, origin, code, verifier, registered.client_id)
    assert response.status_code == 200, response.text
    return registered.client_id, response.json()


def refresh(origin: str, client_id: str, token: str, **extra: str) -> httpx.Response:
    return httpx.post(origin + "/auth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                    "client_id": client_id, **extra})


async def test_rotation_and_reuse_detection(aconn: psycopg.AsyncConnection, origin: str) -> None:
    client_id, first = await tokens_for(aconn, origin, "user/*.rs offline_access")
    second = refresh(origin, client_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert second["scope"] == "user/*.rs offline_access"
    # The used token presented again: refused, and its successor is revoked with it.
    reused = refresh(origin, client_id, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert refresh(origin, client_id, second["refresh_token"]).json()["error"] == "invalid_grant"


async def test_narrowing_but_not_widening(aconn: psycopg.AsyncConnection, origin: str) -> None:
    client_id, first = await tokens_for(aconn, origin, "user/*.rs user/Patient.rs offline_access")
    wider = refresh(origin, client_id, first["refresh_token"], scope="user/*.cruds")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = refresh(origin, client_id, first["refresh_token"], scope="user/Patient.rs")
    assert narrower.json()["scope"] == "user/Patient.rs"
    # The successor still carries the whole original grant.
    again = refresh(origin, client_id, narrower.json()["refresh_token"]).json()
    assert again["scope"] == "user/*.rs user/Patient.rs offline_access"


async def test_revoked_refresh_token_fails(aconn: psycopg.AsyncConnection, origin: str) -> None:
    client_id, first = await tokens_for(aconn, origin, "user/*.rs offline_access")
    revoked = httpx.post(origin + "/auth/revoke", data={"token": first["refresh_token"], "client_id": client_id,
                                                       "token_type_hint": "refresh_token"})
    assert revoked.status_code == 200
    assert refresh(origin, client_id, first["refresh_token"]).json()["error"] == "invalid_grant"


async def test_another_clients_refresh_token_fails(aconn: psycopg.AsyncConnection, origin: str) -> None:
    _, first = await tokens_for(aconn, origin, "user/*.rs offline_access")
    other, _ = await add_client(aconn, "Other", "public", [REDIRECT_URI], ["user/*.rs"])
    assert refresh(origin, other.client_id, first["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("scope, offline", [("user/*.rs offline_access", True), ("user/*.rs online_access", False)])
async def test_offline_renews_and_online_keeps_its_expiry(aconn: psycopg.AsyncConnection, origin: str,
                                                           scope: str, offline: bool) -> None:
    client_id, first = await tokens_for(aconn, origin, scope)
    await aconn.execute("UPDATE auth_refresh_token SET expires_at = now() + interval '10 minutes'")
    second = refresh(origin, client_id, first["refresh_token"]).json()
    rows = await (await aconn.execute(
        "SELECT used, offline, expires_at > now() + interval '20 minutes' FROM auth_refresh_token "
        "ORDER BY used DESC")).fetchall()
    assert rows == [(True, offline, False), (False, offline, offline)]
    await aconn.execute("UPDATE auth_refresh_token SET expires_at = now() - interval '1 second'")
    assert refresh(origin, client_id, second["refresh_token"]).json()["error"] == "invalid_grant"


async def test_no_refresh_token_without_offline_or_online_access(aconn: psycopg.AsyncConnection,
                                                                  origin: str) -> None:
    _, first = await tokens_for(aconn, origin, "user/*.rs")
    assert "refresh_token" not in first
