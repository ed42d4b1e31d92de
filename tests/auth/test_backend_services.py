"""SMART Backend Services: client_credentials with private_key_jwt (RS384, ES384; JWKS inline or by URL),
the checks on the assertion, and client_secret_basic for symmetric clients."""

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from fhir_server.auth.registry import add_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key(alg: str) -> RSAKey | ECKey:
    key = RSAKey.generate_key(2048, private=True) if alg == "RS384" else ECKey.generate_key("P-384", private=True)
    key.ensure_kid()
    return key


def public_jwks(key: RSAKey | ECKey) -> dict:
    return {"keys": [{**key.as_dict(private=False), "kid": key.kid}]}


def assertion(key: RSAKey | ECKey, alg: str, client_id: str, audience: str, kid: str | None = None,
              **changes) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "exp": now + 240, "iat": now,
              "jti": secrets.token_hex(8), **changes}
    return jwt.encode({"alg": alg, "kid": kid or key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_request(origin: str, signed: str, scope: str = "system/*.rs") -> httpx.Response:
    return httpx.post(origin + "/auth/token", data={"grant_type": "client_credentials", "scope": scope,
                                                   "client_assertion_type": ASSERTION_TYPE,
                                                   "client_assertion": signed})


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict]]:
    """An HTTP server publishing whatever JWKS the test puts in the returned dict."""
    published: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", published
    finally:
        server.shutdown()


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_backend_token_with_inline_jwks(aconn: psycopg.AsyncConnection, origin: str, alg: str) -> None:
    key = new_key(alg)
    backend, _ = await add_client(aconn, "Bulk exporter", "confidential-asymmetric", [], ["system/*.rs"],
                                  jwks=public_jwks(key))
    response = token_request(origin, assertion(key, alg, backend.client_id, origin + "/auth/token"),
                             "system/Patient.rs system/*.cruds user/*.rs")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "system/Patient.rs" and body["token_type"] == "Bearer"
    assert "refresh_token" not in body and "patient" not in body
    claims = jwt.decode(body["access_token"], KeySet.import_key_set(httpx.get(origin + "/auth/jwks").json())).claims
    assert claims["sub"] == backend.client_id and claims["client_id"] == backend.client_id
    assert "username" not in claims


async def test_backend_token_with_jwks_uri(aconn: psycopg.AsyncConnection, origin: str,
                                           jwks_server: tuple[str, dict]) -> None:
    url, published = jwks_server
    key = new_key("ES384")
    published.update(public_jwks(key))
    backend, _ = await add_client(aconn, "Remote keys", "confidential-asymmetric", [], ["system/*.rs"],
                                  jwks_uri=url)
    response = token_request(origin, assertion(key, "ES384", backend.client_id, origin + "/auth/token"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", ["bad signature", "replayed jti", "exp too far", "expired", "wrong audience",
                                  "sub differs", "HS256", "no jti"])
async def test_bad_assertions_are_refused(aconn: psycopg.AsyncConnection, origin: str, case: str) -> None:
    key = new_key("RS384")
    backend, _ = await add_client(aconn, "Backend", "confidential-asymmetric", [], ["system/*.rs"],
                                  jwks=public_jwks(key))
    audience, now = origin + "/auth/token", int(time.time())
    if case == "bad signature":
        # The registered kid, but signed by another key.
        signed = assertion(new_key("RS384"), "RS384", backend.client_id, audience, kid=key.kid)
    elif case == "replayed jti":
        signed = assertion(key, "RS384", backend.client_id, audience)
        assert token_request(origin, signed).status_code == 200
    elif case == "exp too far":
        signed = assertion(key, "RS384", backend.client_id, audience, exp=now + 600)
    elif case == "expired":
        signed = assertion(key, "RS384", backend.client_id, audience, exp=now - 60)
    elif case == "wrong audience":
        signed = assertion(key, "RS384", backend.client_id, origin + "/fhir")
    elif case == "sub differs":
        signed = assertion(key, "RS384", backend.client_id, audience, sub="someone-else")
    elif case == "no jti":
        signed = assertion(key, "RS384", backend.client_id, audience, jti=None)
    else:
        signed = jwt.encode({"alg": "HS256"}, {"iss": backend.client_id, "sub": backend.client_id, "aud": audience,
                                               "exp": now + 60, "jti": "x"}, OctKey.generate_key(256))
    response = token_request(origin, signed)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client", case


async def test_client_secret_basic(aconn: psycopg.AsyncConnection, origin: str) -> None:
    backend, secret = await add_client(aconn, "Symmetric", "confidential-symmetric", [], ["system/*.rs"])
    data = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    response = httpx.post(origin + "/auth/token", data=data, auth=(backend.client_id, secret))
    assert response.status_code == 200 and response.json()["scope"] == "system/*.rs"
    assert secret not in response.text
    wrong = httpx.post(origin + "/auth/token", data=data, auth=(backend.client_id, secret + "x"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert (await (await aconn.execute("SELECT secret_hash FROM auth_client")).fetchone())[0] != secret


async def test_public_clients_cannot_use_client_credentials(aconn: psycopg.AsyncConnection, origin: str) -> None:
    public, _ = await add_client(aconn, "Public", "public", ["https://app.example/cb"], ["system/*.rs"])
    response = httpx.post(origin + "/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                                        "client_id": public.client_id})
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    unknown = httpx.post(origin + "/auth/token", data={"grant_type": "client_credentials", "client_id": "nobody"})
    assert unknown.status_code == 401
