"""Alembic environment: runs the migrations on the connection the server hands over (or FHIR_DATABASE_URL),
in the default schema or in one tenant's schema (`schema` attribute)."""

from alembic import context
from sqlalchemy import create_engine

connection = context.config.attributes.get("connection")
schema = context.config.attributes.get("schema")
if connection is not None:
    if schema is not None:
        from psycopg import sql

        # Local to the migration's transaction: tables land in the tenant's schema, extensions resolve in public.
        path = sql.SQL("{}, public").format(sql.Identifier(schema)).as_string(None)
        connection.exec_driver_sql("SELECT set_config('search_path', %s, true)", (path,))
    context.configure(connection=connection, target_metadata=None, version_table_schema=schema)
    with context.begin_transaction():
        context.run_migrations()
else:
    from fhir_server.storage.database import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(context.config.get_main_option("sqlalchemy.url")))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
