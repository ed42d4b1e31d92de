"""A background Patient/$merge that fails is undone: the failure and the versions its undo wrote.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# `failure` (the OperationOutcome issues of the error) is set when a running merge fails; from then on
# its batches undo the rewrites, last first, moving `done` back to 0, before the Task is failed. Each
# undone resource keeps the version it had before the undo and the version the undo wrote, for the
# Provenance of the undo. The partial index serves the "merge in progress" check on the source.
# The list of referrers loses its foreign key: checking it took a key-share lock on every row listed, so
# accepting a merge waited for any transaction that was writing one of them (resource rows are never removed).
UPGRADE = """
ALTER TABLE patient_merge_referrer DROP CONSTRAINT patient_merge_referrer_resource_id_fkey;
ALTER TABLE patient_merge_job ADD COLUMN failure jsonb;
ALTER TABLE patient_merge_referrer ADD COLUMN undo_before integer, ADD COLUMN undo_after integer;
CREATE INDEX patient_merge_job_running_source ON patient_merge_job (source) WHERE finished_at IS NULL;
"""

DOWNGRADE = """
DROP INDEX patient_merge_job_running_source;
ALTER TABLE patient_merge_referrer DROP COLUMN undo_before, DROP COLUMN undo_after;
ALTER TABLE patient_merge_job DROP COLUMN failure;
ALTER TABLE patient_merge_referrer ADD FOREIGN KEY (resource_id) REFERENCES resource (id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
