"""Asynchronous Patient/$merge: the job a worker completes in batches, with its fixed list of referrers.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# A large $merge fixes the list of resources that reference the source when it is accepted (one row per
# resource, in `position` order) and a worker rewrites them in batches of consecutive positions. `done`
# counts the positions whose batch has committed: each batch moves it in its own transaction, so a
# redelivered batch starts where the last commit left off and never applies anything twice. The
# versions before and after each rewrite (none after when nothing referenced the source any more) and the
# number of references rewritten become the Provenance and the outcome when the merge completes.
#
# While the job runs, patient_replaced already holds the source (without a Provenance yet), so writes
# that reference the source are refused from the moment the merge is accepted.
UPGRADE = """
ALTER TABLE patient_replaced ALTER COLUMN provenance DROP NOT NULL;

CREATE TABLE patient_merge_job (
    task           bigint      PRIMARY KEY REFERENCES resource (id),
    source         bigint      NOT NULL REFERENCES resource (id),
    target         bigint      NOT NULL REFERENCES resource (id),
    base_url       text,
    result_patient jsonb,
    total          integer     NOT NULL,
    done           integer     NOT NULL DEFAULT 0,
    finished_at    timestamptz
);
CREATE INDEX patient_merge_job_running ON patient_merge_job (target) WHERE finished_at IS NULL;

CREATE TABLE patient_merge_referrer (
    task           bigint  NOT NULL REFERENCES patient_merge_job (task) ON DELETE CASCADE,
    position       integer NOT NULL,
    resource_id    bigint  NOT NULL REFERENCES resource (id),
    version_before integer,
    version_after  integer,
    rewritten      integer,
    PRIMARY KEY (task, position)
);
"""

DOWNGRADE = """
DROP TABLE patient_merge_referrer;
DROP TABLE patient_merge_job;
DELETE FROM patient_replaced WHERE provenance IS NULL;
ALTER TABLE patient_replaced ALTER COLUMN provenance SET NOT NULL;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
