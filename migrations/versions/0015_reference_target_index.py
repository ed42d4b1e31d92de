"""References by target: the index also holds the referrer's type and parameter, and covers the row.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# A chain (`Communication?subject:Patient.family=...`) walks from each matching target to the references to
# it. On (target_type, target_id) alone PostgreSQL read every reference to the target (a Patient has a dozen:
# its Tasks, DocumentReferences, ...) from the table to keep the one type and parameter asked for. With the
# referrer's type and parameter in the key and the rest included, the walk reads the index only. The other
# users of this index (compartments, $everything, $merge) name the target and optionally the type/parameter.
UPGRADE = """
DROP INDEX search_reference_target;
CREATE INDEX search_reference_target ON search_reference (target_type, target_id, resource_type, param)
    INCLUDE (resource_id, target_url);
"""
DOWNGRADE = """
DROP INDEX search_reference_target;
CREATE INDEX search_reference_target ON search_reference (target_type, target_id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
