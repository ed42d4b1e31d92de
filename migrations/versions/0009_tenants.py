"""The tenant registry (FHIR_TENANCY=url): tenant name -> the schema that holds its tables.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The registry lives in public whichever schema is being migrated (tenant schemas run this revision too, as
# a no-op). Schema names come from a sequence, never from the tenant's name: always a valid identifier, never
# one of PostgreSQL's own, and never re-used when a removed tenant's name is registered again.


def upgrade() -> None:
    op.execute("""
CREATE SEQUENCE IF NOT EXISTS public.tenant_schema_seq;
CREATE TABLE IF NOT EXISTS public.tenant (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9-]{1,63}$'),
    schema_name text NOT NULL UNIQUE DEFAULT 'tenant_' || nextval('public.tenant_schema_seq'),
    created_at timestamptz NOT NULL DEFAULT now()
);
""")


def downgrade() -> None:
    op.execute("""
DO $$ BEGIN
    IF current_schema() = 'public' THEN
        DROP TABLE IF EXISTS public.tenant;
        DROP SEQUENCE IF EXISTS public.tenant_schema_seq;
    END IF;
END $$;
""")
