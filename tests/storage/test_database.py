"""storage/database: the pool prepares the repository's fixed statements and nothing else."""

from fhir_server.storage import repository
from fhir_server.storage.database import create_pool

PATIENT = {"resourceType": "Patient", "name": [{"family": "Prepared"}]}


async def test_repository_writes_run_prepared_and_searches_do_not(database_url: str) -> None:
    pool = create_pool(database_url, 1)
    await pool.open()
    try:
        async with pool.connection() as conn:
            for _ in range(2):
                async with conn.transaction():
                    await repository.create(conn, dict(PATIENT))
            await conn.execute("SELECT id FROM resource WHERE resource_type = %s LIMIT %s", ("Patient", 5))
            prepared = [row[0] for row in await (await conn.execute(
                "SELECT statement FROM pg_prepared_statements")).fetchall()]
    finally:
        await pool.close()
    assert len([sql for sql in prepared if sql.startswith("WITH w AS (INSERT INTO resource ")]) == 1
    assert not [sql for sql in prepared if "LIMIT" in sql]
