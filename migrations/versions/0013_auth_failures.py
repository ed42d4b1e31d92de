"""Failed sign-ins and client authentications, for throttling (fhir_server.auth.throttle).

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# One row per failure within the window; `key_hash` is the SHA-256 of what was tried and from where.
UPGRADE = """
CREATE TABLE auth_failure (
    key_hash  text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX auth_failure_key ON auth_failure (key_hash, failed_at);
CREATE INDEX auth_failure_failed_at ON auth_failure (failed_at);
"""

DOWNGRADE = """
DROP TABLE auth_failure;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
