"""Fixtures that start the real services the tests talk to: embedded PostgreSQL and the HTTP server."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
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
          "auth_user", "auth_signing_key", "outbox", "embedding_chunk", "embedding_consent",
          "audit_log", "auth_failure")
# Servers started for other tests leave the outbox alone; tests of background work start their own workers
# with the settings they need (`background_app`, `worker_process` below).
os.environ.setdefault("FHIR_BACKGROUND", "off")
# Likewise embedding (outbox work on every write of a resource with text): the embedding tests turn it on.
os.environ.setdefault("FHIR_EMBEDDINGS", "off")


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
            # A transaction left open by an earlier test's server (e.g. a worker thread outliving its stop
            # timeout on a loaded machine) would make TRUNCATE, and every later test, wait: end it first.
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%' "
                         "AND state_change < now() - interval '1 second'")
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


@contextmanager
def running_server(env: dict[str, str], log_path: Path, ready_path: str = "/fhir/metadata",
                   seconds: float = 30) -> Iterator[str]:
    """A real `fhir-server serve` on a free loopback port with `env`; yields its origin once `ready_path` answers."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(origin + ready_path, process, seconds)
        yield origin
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        if os.environ.get("FHIR_TEST_SHOW_SERVER_LOG"):
            sys.stderr.write(Path(log_path).read_text())


@pytest.fixture(scope="session")
def server_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `fhir-server serve` on a loopback port, over the test database; yields the base URL."""
    env = {**os.environ, "FHIR_DATABASE_URL": database_url}
    with running_server(env, tmp_path_factory.mktemp("server") / "server.log") as origin:
        yield origin + "/fhir"


@pytest.fixture
def client(server_url: str, database_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence (`make test` installs it)."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection for asserting database state."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def twilio_server() -> Iterator["FakeTwilio"]:
    from tests.twilio_fake import FakeTwilio

    fake = FakeTwilio().start()
    yield fake
    fake.stop()


@pytest.fixture
def twilio(twilio_server: "FakeTwilio") -> Iterator["FakeTwilio"]:
    """The local Twilio Messages API, emptied for each test."""
    twilio_server.reset()
    yield twilio_server
    twilio_server.release()


class SMTPInbox:
    """What the aiosmtpd server received: (envelope sender, recipients, message) per mail, and who logged in."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"secret"):
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[SMTPInbox, int]]:
    """A real SMTP server (aiosmtpd) on a loopback port that accepts user `mailer`, password `secret`."""
    from aiosmtpd.controller import Controller

    inbox = SMTPInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def smtp(smtp_server: tuple[SMTPInbox, int]) -> SMTPInbox:
    inbox, _ = smtp_server
    inbox.mails.clear()
    inbox.logins.clear()
    return inbox


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto in server mode on a loopback port (S3, SES, ...): real HTTP and signatures, nothing leaves the machine."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def smtp_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SMTPInbox, int, Path]]:
    """A real SMTP server that requires STARTTLS before anything else (AUTH included), with a certificate
    for 127.0.0.1 signed by a CA made here; yields the inbox, the port and the CA's PEM file."""
    import ssl

    from aiosmtpd.controller import Controller

    from tests.certificates import make_ca_and_server_certificate

    directory = tmp_path_factory.mktemp("smtp-tls")
    ca_file, cert_file, key_file = make_ca_and_server_certificate(directory, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    inbox = SMTPInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            tls_context=context, require_starttls=True, auth_require_tls=True)
    controller.start()
    yield inbox, port, ca_file
    controller.stop()


@pytest.fixture
def background_app(database_url: str, twilio: "FakeTwilio", smtp_server: tuple[SMTPInbox, int],
                   monkeypatch: pytest.MonkeyPatch):
    """`async with background_app(FHIR_X="1") as (app, client):` an in-process server that also relays and
    delivers (the embedded default), wired to the local Twilio and SMTP servers; "" unsets a variable."""
    from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN

    defaults = {
        "FHIR_DATABASE_URL": database_url, "FHIR_BACKGROUND": "in-process", "FHIR_WORKER_THREADS": "2",
        "FHIR_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "FHIR_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "FHIR_TWILIO_FROM_NUMBER": "+15005550006", "FHIR_TWILIO_WHATSAPP_FROM": "+14155238886",
        "FHIR_TWILIO_API_BASE": twilio.url, "FHIR_SMTP_HOST": "127.0.0.1", "FHIR_SMTP_PORT": str(smtp_server[1]),
        "FHIR_SMTP_STARTTLS": "false", "FHIR_SMTP_USERNAME": "mailer", "FHIR_SMTP_PASSWORD": "secret",
        "FHIR_SMTP_FROM": "clinic@example.org", "FHIR_RETRY_BASE_SECONDS": "0.2",
        "FHIR_OUTBOX_POLL_SECONDS": "0.2",
    }

    @asynccontextmanager
    async def make(**env: str):
        async with in_process_app(monkeypatch, {**defaults, **env}, "http://test") as running:
            yield running

    return make


@pytest.fixture
def configured_client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """`async with configured_client(FHIR_X="1") as client:` talks to an app built with those settings."""

    @asynccontextmanager
    async def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        async with in_process_app(monkeypatch, {"FHIR_DATABASE_URL": database_url, **env},
                                  "http://test/fhir") as (_, client):
            yield client

    return make


@asynccontextmanager
async def in_process_app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], base_url: str
                         ) -> AsyncIterator[tuple[FHIRApplication, httpx.AsyncClient]]:
    """The app built from settings with `env` applied ("" unsets a variable), its lifespan running, and a
    client talking to it in-process."""
    for name, value in env.items():
        if value == "":
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    app = FHIRApplication(get_settings())
    try:
        async with app.lifespan(app.fastapi):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
                yield app, client
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.fixture
def worker_process(database_url: str, redis_url: str, twilio: "FakeTwilio", tmp_path: Path):
    """`start(**env)` runs a real `fhir-server worker` against the test database and Redis (flushed first),
    wired to the local Twilio; every process started is killed at the end of the test."""
    import redis

    from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN

    redis.Redis.from_url(redis_url).flushall()
    processes: list[subprocess.Popen] = []

    def start(**env: str) -> subprocess.Popen:
        environment = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_REDIS_URL": redis_url,
                       "FHIR_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "FHIR_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                       "FHIR_TWILIO_FROM_NUMBER": "+15005550006", "FHIR_TWILIO_API_BASE": twilio.url,
                       "FHIR_OUTBOX_POLL_SECONDS": "0.2", "FHIR_WORKER_THREADS": "2", **env}
        log = open(tmp_path / f"worker-{len(processes)}.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "worker"], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
