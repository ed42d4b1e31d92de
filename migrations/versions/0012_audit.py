"""Audit records waiting to become AuditEvent resources.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# One row per audited interaction, written in the transaction of the write it records (or in bulk from a
# server process's audit journal for reads); a background job turns rows into AuditEvent resources and
# deletes them in one transaction. `id` is also the AuditEvent's id, so a journal replayed twice after a
# crash inserts nothing new (ON CONFLICT DO NOTHING here, and the job skips ids already stored).
UPGRADE = """
CREATE TABLE audit_log (
    id    uuid  PRIMARY KEY,
    event bytea NOT NULL
);
"""

DOWNGRADE = "DROP TABLE audit_log;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
