"""Helpers for the authorization server tests: registering clients and users, PKCE, reading the HTML forms."""

import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
import pytest

REDIRECT_URI = "https://app.example/callback"


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def origin(server_url: str) -> str:
    return server_url.removesuffix("/fhir")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(origin: str, client_id: str, scope: str, challenge: str, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "scope": scope,
              "state": "st-1", "aud": origin + "/fhir", "code_challenge": challenge,
              "code_challenge_method": "S256", **extra}
    return f"{origin}/auth/authorize?{urlencode(params)}"


def form_token(html: str) -> str:
    return unescape(re.search(r'name="form_token" value="([^"]+)"', html)[1])


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def exchange_code(http: httpx.Client, origin: str, code: str, verifier: str, client_id: str,
                  **extra: str) -> httpx.Response:
    return http.post(f"{origin}/auth/token", data={"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
                                                   "client_id": client_id, **extra})
