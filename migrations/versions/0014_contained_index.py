"""Index rows of contained resources: `contained_id` marks them (NULL for a resource's own rows).

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_TABLES = ("string", "token", "date", "number", "quantity", "uri", "reference", "text", "concept")

# A nullable column without default: a catalog change, no table rewrite. Contained rows carry
# resource_type '#<type>' (fhir_server.search.extract.contained_type), so the existing indexes serve them.
UPGRADE = "".join(f"ALTER TABLE search_{table} ADD COLUMN contained_id text;\n" for table in _TABLES)
DOWNGRADE = "".join(f"ALTER TABLE search_{table} DROP COLUMN contained_id;\n" for table in _TABLES)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
