"""Tenant administration (`fhir-server tenants`), and the pool that scopes every connection to one tenant."""

import orjson
import psycopg
import pytest

from fhir_server.identity import mrn
from fhir_server.storage import repository, tenants
from fhir_server.storage.database import create_pool
from tests.tenancy.conftest import cli


def test_tenants_cli(database_url: str, tenancy, tmp_path) -> None:
    assert cli(database_url, "tenants", "add", "Not_Valid", check=False).returncode == 1
    assert "exists already" in cli(database_url, "tenants", "add", "alpha", check=False).stderr
    listed = cli(database_url, "tenants", "list").stdout
    assert f"alpha  schema={tenancy.schemas['alpha']}" in listed and f"beta  schema={tenancy.schemas['beta']}" in listed

    added = cli(database_url, "tenants", "add", "gamma-1").stdout
    schema = added.split("schema ")[1].strip(")\n")
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                              (schema,)).fetchone()[0]
        assert tables == conn.execute("SELECT count(*) FROM information_schema.tables "
                                      "WHERE table_schema = 'public' AND table_name <> 'tenant'").fetchone()[0]
        assert conn.execute(f"SELECT version_num FROM {schema}.alembic_version").fetchone() == \
            conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
    # With tenancy on, data commands name their tenant.
    refused = cli(database_url, "users", "list", check=False, FHIR_TENANCY="url")
    assert refused.returncode == 2 and "--tenant" in refused.stderr
    assert cli(database_url, "users", "list", "--tenant", "nobody", check=False).returncode == 1
    stored = tmp_path / schema / "sha256" / "ab" / ("ab" + "0" * 62)  # a document object of gamma-1
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"gamma's bytes")
    removed = cli(database_url, "tenants", "remove", "gamma-1", "--yes", FHIR_DOCUMENT_DIR=str(tmp_path)).stdout
    assert "1 document objects deleted" in removed and not stored.exists()
    assert "gamma-1" not in cli(database_url, "tenants", "list").stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    assert cli(database_url, "tenants", "remove", "gamma-1", "--yes", check=False).returncode == 1


async def test_the_pool_never_runs_a_query_outside_a_tenant(database_url: str, tenancy) -> None:
    pool = create_pool(database_url, 1, "url")
    await pool.open(wait=True)
    try:
        with pytest.raises(RuntimeError, match="no tenant selected"):
            async with pool.connection():
                pass
        alpha = await pool.resolve("alpha")
        with pytest.raises(tenants.UnknownTenant):
            await pool.resolve("nobody")
        for tenant in (alpha, tenants.Tenant("ghost", "tenant_does_not_exist"), alpha):
            selected = tenants.current.set(tenant)
            try:
                if tenant is alpha:
                    async with pool.connection() as conn:
                        assert (await (await conn.execute("SELECT current_schema()")).fetchone())[0] == alpha.schema
                else:  # a schema that is gone must not fall through to public
                    with pytest.raises(tenants.UnknownTenant):
                        async with pool.connection():
                            pass
            finally:
                tenants.current.reset(selected)
    finally:
        await pool.close()


async def test_prepared_statements_follow_the_tenant(database_url: str, tenant_db) -> None:
    """One connection serving both tenants in turn runs the repository's prepared statements in each schema."""
    pool = create_pool(database_url, 1, "url")
    await pool.open(wait=True)
    try:
        found = []
        for round_ in range(3):
            for name in ("alpha", "beta"):
                selected = tenants.current.set(await pool.resolve(name))
                try:
                    async with pool.connection() as conn:
                        if round_ == 0:
                            async with conn.transaction():
                                await repository.create(conn, {"resourceType": "Patient", "id": "same",
                                                               "name": [{"family": name}]}, "same")
                        stored = await repository.read(conn, "Patient", "same")
                        found.append(orjson.loads(stored.content)["name"][0]["family"])
                        prepared = (await (await conn.execute(
                            "SELECT count(*) FROM pg_prepared_statements")).fetchone())[0]
                finally:
                    tenants.current.reset(selected)
        assert found == ["alpha", "beta"] * 3 and prepared > 0
    finally:
        await pool.close()


async def test_each_tenant_numbers_its_patients_from_its_own_sequence(database_url: str, tenant_db,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """MRN numbers are drawn in blocks and kept in memory: per tenant, or a tenant would hand out another's."""
    monkeypatch.setattr(mrn, "_reserved", {})
    starts = {"alpha": 1_000_000, "beta": 2_000_000}
    for name, start in starts.items():
        tenant_db[name].execute(f"ALTER SEQUENCE patient_mrn_seq RESTART {start}")
    pool = create_pool(database_url, 1, "url")
    await pool.open(wait=True)
    try:
        numbers: dict[str, list[int]] = {"alpha": [], "beta": []}
        for _ in range(3):
            for name in starts:
                selected = tenants.current.set(await pool.resolve(name))
                try:
                    async with pool.connection() as conn:
                        numbers[name].append(int((await mrn.new_mrn(conn))[-7:]))
                finally:
                    tenants.current.reset(selected)
    finally:
        await pool.close()
    assert numbers == {name: [start, start + 1, start + 2] for name, start in starts.items()}


def test_import_into_a_tenant(database_url: str, http, tmp_path) -> None:
    path = tmp_path / "patients.ndjson"
    path.write_text('{"resourceType": "Patient", "id": "imported", "name": [{"family": "Imported"}]}\n')
    assert cli(database_url, "import", "--tenant", "beta", str(path), FHIR_TENANCY="url").returncode == 0
    assert http["beta"].get("/Patient/imported").json()["name"][0]["family"] == "Imported"
    assert http["alpha"].get("/Patient/imported").status_code == 404
    assert cli(database_url, "import", str(path), check=False, FHIR_TENANCY="url").returncode == 2
    assert cli(database_url, "import", "--tenant", "nobody", str(path), check=False).returncode == 1
