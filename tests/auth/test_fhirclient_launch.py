"""A SMART standalone launch driven by the real fhirclient JavaScript library in headless Chromium.

The app's two pages (`smart_app/`) are served from their own loopback origin, as a SMART app would be; the
browser goes through the server's real login, patient picker and consent pages, filled in like a user would,
and the app reads its patient with the token it got. `make test` installs Debian's chromium, Playwright
(which drives it) and the fhirclient browser bundle.
"""

import json
import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from playwright.async_api import Page, async_playwright

from fhir_server.auth.registry import add_client, add_user
from tests.auth.test_authorization_code import create_patient
from tests.conftest import running_server

APP_DIR = Path(__file__).parent / "smart_app"
SCOPE = "launch/patient patient/*.read openid fhirUser"
WAIT_MS = 60_000


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def app_origin() -> Iterator[str]:
    """The SMART app's pages on their own origin."""
    assert (APP_DIR / "fhir-client.js").exists(), "the fhirclient bundle is fetched by `make test`"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(APP_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def smart_server(database_url: str, app_origin: str, tmp_path: Path) -> Iterator[str]:
    """A server requiring tokens that lets the app's origin call it (CORS), over the test database."""
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_AUTH": "smart", "FHIR_CORS_ORIGINS": app_origin}
    with running_server(env, tmp_path / "server.log") as origin:
        yield origin + "/fhir"


async def _sign_in(page: Page, password: str) -> None:
    await page.wait_for_selector('input[name="password"]', timeout=WAIT_MS)
    await page.fill('input[name="username"]', "alice")
    await page.fill('input[name="password"]', password)
    await page.click('button[type="submit"]')


async def test_standalone_launch_with_fhirclient_in_chromium(smart_server: str, app_origin: str,
                                                             client: httpx.Client,
                                                             aconn: psycopg.AsyncConnection) -> None:
    smith = create_patient(client, "Smith", "Ann")  # `client` talks to the session's server, same database
    jones = create_patient(client, "Jones", "Bob")
    await add_user(aconn, "alice", "wonderland", fhir_user="Practitioner/p1")
    registered, _ = await add_client(aconn, "Growth Chart", "public", [f"{app_origin}/app.html"], SCOPE.split())
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by `make test`"
    server_origin = smart_server.removesuffix("/fhir")

    async with async_playwright() as playwright:
        # CI runs as root, where Chromium's sandbox cannot start, in containers with a small /dev/shm.
        browser = await playwright.chromium.launch(executable_path=chromium,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page()
            launch = urlencode({"iss": smart_server, "client_id": registered.client_id})
            await page.goto(f"{app_origin}/launch.html?{launch}")
            await _sign_in(page, "not-the-password")
            assert await page.is_visible("text=Wrong user name or password.")
            assert page.url.startswith(f"{server_origin}/auth/authorize")
            await _sign_in(page, "wonderland")

            await page.wait_for_selector('input[name="patient"]', timeout=WAIT_MS)
            assert await page.is_visible("text=Allow access?")
            await page.fill('input[name="name"]', "smi")  # the picker's name search
            await page.click('button[value="search"]')
            await page.wait_for_selector(f'input[name="patient"][value="{smith}"]', timeout=WAIT_MS)
            assert not await page.is_visible(f'input[name="patient"][value="{jones}"]')
            await page.check(f'input[name="patient"][value="{smith}"]')
            await page.click('button[value="approve"]')

            await page.wait_for_selector('body[data-done="true"]', timeout=WAIT_MS)
            assert page.url.startswith(f"{app_origin}/app.html")
            result = json.loads(await page.text_content("#result"))
        finally:
            await browser.close()

    assert "error" not in result, result
    assert result["patientId"] == smith
    assert result["patient"]["resourceType"] == "Patient" and result["patient"]["id"] == smith
    assert result["patient"]["name"][0]["family"] == "Smith"
    assert result["fhirUser"] == "Practitioner/p1"
    token = result["tokenResponse"]
    assert token["token_type"] == "Bearer" and token["patient"] == smith and token["id_token"]
    assert set(token["scope"].split()) == set(SCOPE.split())
    # The token the app holds is a real one, confined to the patient picked in the browser.
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(f"{smart_server}/Patient/{smith}", headers=bearer).status_code == 200
    assert httpx.get(f"{smart_server}/Patient/{jones}", headers=bearer).status_code == 404
    # CORS is what let the app's origin call the server; other origins get no grant.
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{smart_server}/Patient/{smith}", headers={"Origin": app_origin, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == app_origin
    refused = httpx.options(f"{smart_server}/Patient/{smith}", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
