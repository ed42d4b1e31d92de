"""Alembic environment: runs the migrations on the connection the server hands over (or FHIR_DATABASE_URL)."""

from alembic import context
from sqlalchemy import create_engine

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
else:
    from fhir_server.storage.database import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(context.config.get_main_option("sqlalchemy.url")))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
