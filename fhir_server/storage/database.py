"""Connection pool and schema migrations for the PostgreSQL database."""

from urllib.parse import urlsplit

from psycopg_pool import AsyncConnectionPool

from fhir_server.paths import MIGRATIONS_DIR


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy spelling of a libpq URL, so Alembic talks through psycopg 3."""
    scheme = urlsplit(url).scheme
    return "postgresql+psycopg" + url[len(scheme):]


def migrate(database_url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.begin() as connection:
        # Serialise concurrent start-ups (several uvicorn workers, or a second server).
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(815001)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()


NEVER_PREPARE_AUTOMATICALLY = 2**31 - 1
"""psycopg prepares a statement after this many executions; only `prepare=True` ones reach the server prepared."""


def create_pool(database_url: str, size: int) -> AsyncConnectionPool:
    """Connections in autocommit mode: a read is one statement and one round trip; writes open a
    transaction explicitly (`conn.transaction()`).

    Nothing is prepared automatically: a prepared search soon runs on PostgreSQL's generic plan, which
    is blind to how selective its values are (an unselective `_has` ran 3x slower). The hot fixed
    statements of the repository ask to be prepared (`prepare=True`). The threshold must be a number for
    that: psycopg ignores `prepare=True` when it is None.
    """
    return AsyncConnectionPool(database_url, min_size=size, max_size=size, open=False,
                               kwargs={"autocommit": True, "prepare_threshold": NEVER_PREPARE_AUTOMATICALLY})
