"""Throttled sign-ins and client authentications, over HTTP against real servers (5 failures in 900 s)."""

import os
import re
from pathlib import Path

import httpx
import psycopg

from fhir_server.auth.registry import add_client, add_user
from fhir_server.settings import Settings
from tests.auth.conftest import REDIRECT_URI, authorize_url, form_token, pkce
from tests.conftest import running_server

LIMIT = Settings().auth_max_failed_attempts
WINDOW = Settings().auth_failure_window


def _sign_in(browser: httpx.Client, origin: str, client_id: str, username: str, password: str) -> httpx.Response:
    page = browser.get(authorize_url(origin, client_id, "patient/*.rs", pkce()[1]))
    return browser.post(origin + "/auth/authorize/login",
                        data={"form_token": form_token(page.text), "username": username, "password": password})


async def _age_failures(aconn: psycopg.AsyncConnection, seconds: int) -> None:
    """Move every recorded failure `seconds` into the past, as if that time had gone by."""
    await aconn.execute("UPDATE auth_failure SET failed_at = failed_at - make_interval(secs => %s)", (seconds,))


async def test_sign_ins_are_throttled_per_user_name_and_address(database_url: str, tmp_path: Path,
                                                                aconn: psycopg.AsyncConnection) -> None:
    await add_user(aconn, "carol", "right-password")
    await add_user(aconn, "dave", "dave-password")
    client, _ = await add_client(aconn, "App", "public", [REDIRECT_URI], ["patient/*.rs"])
    env = {**os.environ, "FHIR_DATABASE_URL": database_url}
    with running_server(env, tmp_path / "server.log") as origin, httpx.Client(timeout=30) as browser:
        for _ in range(LIMIT):
            wrong = _sign_in(browser, origin, client.client_id, "carol", "guess-1234")
            assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        # Only digests are stored: neither the name tried nor the address.
        stored = [row[0] for row in await (await aconn.execute("SELECT key_hash FROM auth_failure")).fetchall()]
        assert len(stored) == LIMIT and len(set(stored)) == 1 and re.fullmatch("[0-9a-f]{64}", stored[0])
        refused = _sign_in(browser, origin, client.client_id, "carol", "right-password")
        assert refused.status_code == 429
        assert WINDOW - 60 < int(refused.headers["retry-after"]) <= WINDOW
        assert "Too many failed sign-ins. Try again in 15 minutes." in refused.text
        assert 'name="password"' in refused.text  # the form stays, for when the wait is over
        # Another user from the same address is not affected.
        assert _sign_in(browser, origin, client.client_id, "dave", "dave-password").status_code == 200

        # Once the oldest failure has left the window, one more attempt is allowed; a success clears the count.
        await _age_failures(aconn, WINDOW - 100)
        assert _sign_in(browser, origin, client.client_id, "carol", "right-password").status_code == 429
        await _age_failures(aconn, 101)
        allowed = _sign_in(browser, origin, client.client_id, "carol", "right-password")
        assert allowed.status_code == 200 and "Allow access?" in allowed.text
        assert (await (await aconn.execute("SELECT count(*) FROM auth_failure")).fetchone())[0] == 0
    log = (tmp_path / "server.log").read_text()
    assert log.startswith("FHIR R4 server on") and "guess-1234" not in log and "right-password" not in log


async def test_failed_client_authentications_are_throttled(origin: str, aconn: psycopg.AsyncConnection) -> None:
    backend, secret = await add_client(aconn, "Backend", "confidential-symmetric", [], ["system/*.rs"])
    other, other_secret = await add_client(aconn, "Other backend", "confidential-symmetric", [], ["system/*.rs"])
    data = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    for _ in range(LIMIT):
        wrong = httpx.post(origin + "/auth/token", data=data, auth=(backend.client_id, "not-the-secret"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    refused = httpx.post(origin + "/auth/token", data=data, auth=(backend.client_id, secret))
    assert refused.status_code == 429
    assert refused.json()["error"] == "temporarily_unavailable"
    assert WINDOW - 60 < int(refused.headers["retry-after"]) <= WINDOW
    assert refused.headers["cache-control"] == "no-store"
    # Introspection authenticates the same client and is refused the same way.
    introspect = httpx.post(origin + "/auth/introspect", data={"token": "x"}, auth=(backend.client_id, secret))
    assert introspect.status_code == 429
    assert httpx.post(origin + "/auth/token", data=data, auth=(other.client_id, other_secret)).status_code == 200

    await _age_failures(aconn, WINDOW)
    assert httpx.post(origin + "/auth/token", data=data, auth=(backend.client_id, secret)).status_code == 200
