"""Canonical references looked up by their URL: `_revinclude`, `_has` and chains find who names a resource.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Only references written as absolute URLs (canonicals, references to other servers) have a target_url:
# a partial index stays small. Queries repeat `target_url IS NOT NULL` so that the planner can use it.
UPGRADE = """
CREATE INDEX search_reference_url ON search_reference (target_url) INCLUDE (resource_id, resource_type, param)
    WHERE target_url IS NOT NULL;
"""
DOWNGRADE = "DROP INDEX search_reference_url;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
