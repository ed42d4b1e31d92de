"""A real multi-tenant server (FHIR_TENANCY=url, FHIR_AUTH=smart) with tenants `alpha` and `beta`, each with a
backend client registered through the CLI, and HTTP clients holding a token of each tenant. The server runs
no background work: the tests of background work start their own relay and workers."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import TABLES, running_server

TENANTS = ("alpha", "beta")
DATA_TABLES = [table for table in TABLES if not table.startswith("auth_")] + ["document_object"]


def cli(database_url: str, *args: str, check: bool = True, input: str | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """Run `fhir-server ARGS` against the test database."""
    result = subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], capture_output=True, text=True,
                            input=input, env={**os.environ, "FHIR_DATABASE_URL": database_url, **env}, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@dataclass(frozen=True)
class Tenancy:
    origin: str
    base: str
    """http://host:port/fhir"""
    schemas: dict[str, str]
    credentials: dict[str, tuple[str, str]]
    document_dir: Path

    def url(self, tenant: str) -> str:
        return f"{self.base}/{tenant}"

    def token(self, tenant: str, scope: str = "system/*.cruds") -> str:
        response = httpx.post(f"{self.url(tenant)}/auth/token", auth=self.credentials[tenant],
                              data={"grant_type": "client_credentials", "scope": scope})
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


@pytest.fixture(scope="session")
def tenancy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    schemas, credentials = {}, {}
    for name in TENANTS:
        added = cli(database_url, "tenants", "add", name).stdout
        schemas[name] = re.search(r"schema (\w+)", added)[1]
        registered = cli(database_url, "clients", "add", f"{name} backend", "--type", "confidential-symmetric",
                         "--scope", "system/*.cruds", "--client-id", f"{name}-backend", "--tenant", name).stdout
        credentials[name] = (f"{name}-backend", re.search(r"client_secret: (\S+)", registered)[1])
    document_dir = tmp_path_factory.mktemp("tenant-documents")
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_TENANCY": "url", "FHIR_AUTH": "smart",
           "FHIR_BACKGROUND": "off", "FHIR_DOCUMENT_DIR": str(document_dir), "FHIR_AUTH_TOKEN_LIFETIME": "3600"}
    log_path = tmp_path_factory.mktemp("tenant-server") / "server.log"
    try:
        with running_server(env, log_path, "/fhir/alpha/metadata", 120) as origin:
            yield Tenancy(origin, origin + "/fhir", schemas, credentials, document_dir)
    finally:
        for name in TENANTS:
            cli(database_url, "tenants", "remove", name, "--yes", check=False)


@pytest.fixture
def tenant_db(database_url: str, tenancy: Tenancy) -> Iterator[dict[str, psycopg.Connection]]:
    """A direct connection into each tenant's schema; the tenants' data (not their clients) emptied first."""
    connections = {}
    try:
        for name, schema in tenancy.schemas.items():
            conn = psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema},public")
            conn.execute("TRUNCATE " + ", ".join(DATA_TABLES) + " RESTART IDENTITY CASCADE")
            connections[name] = conn
        yield connections
    finally:
        for conn in connections.values():
            conn.close()


@pytest.fixture
def http(tenancy: Tenancy, tenant_db: dict) -> Iterator[dict[str, httpx.Client]]:
    """An HTTP client per tenant, at its base and with its token."""
    clients = {name: httpx.Client(base_url=tenancy.url(name), timeout=30,
                                  headers={"Authorization": f"Bearer {tenancy.token(name)}"})
               for name in TENANTS}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()
