"""Fixtures that start the real services the tests talk to: embedded PostgreSQL and the HTTP server."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from fhir_server.api.app import FHIRApplication
from fhir_server.settings import get_settings
from fhir_server.storage.database import migrate
from fhir_server.storage.embedded import EmbeddedPostgres

TABLES = ("resource_version", "resource", "search_string", "search_token", "search_date", "search_number",
          "search_quantity", "search_uri", "search_reference", "search_text", "search_concept",
          "auth_assertion_jti", "auth_revoked_token", "auth_refresh_token", "auth_code", "auth_launch", "auth_client",
          "auth_user", "auth_signing_key")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per test session: FHIR_TEST_DATABASE_URL if given, else an embedded PostgreSQL."""
    url = os.environ.get("FHIR_TEST_DATABASE_URL")
    if url:
        migrate(url)
        yield url
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    url = embedded.start()
    try:
        migrate(url)
        yield url
    finally:
        embedded.stop()


@pytest.fixture(autouse=True)
def clean_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty every table before a test that uses the database."""
    if "database_url" in request.fixturenames:
        url = request.getfixturevalue("database_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")
    yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {seconds}s")


@pytest.fixture(scope="session")
def server_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `fhir-server serve` on a loopback port, over the test database; yields the base URL."""
    port = free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": database_url}
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        wait_until_up(base + "/metadata", process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        if os.environ.get("FHIR_TEST_SHOW_SERVER_LOG"):
            sys.stderr.write(Path(log_path).read_text())


@pytest.fixture
def client(server_url: str, database_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as http:
        yield http


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection for asserting database state."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def configured_client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """`async with configured_client(FHIR_X="1") as client:` talks to an app built with those settings."""

    @asynccontextmanager
    async def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        app = FHIRApplication(get_settings())
        try:
            async with app.lifespan(app.fastapi):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test/fhir") as client:
                    yield client
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()

    return make
