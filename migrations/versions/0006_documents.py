"""Documents: one row per object in the document store (the bytes themselves live in S3 or on the filesystem).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# `sha256` (hex) names the object in the store. `last_seen` is bumped by every write that references the
# object (before the object is put), and garbage collection spares rows seen within its grace period and
# locks a row before deleting the object: see fhir_server/documents/objects.py. sha1, size and content_type
# are NULL only for objects the collector found in the store without a row (a write that rolled back).
UPGRADE = """
CREATE TABLE document_object (
    sha256        text        PRIMARY KEY,
    sha1          text,
    size          bigint,
    content_type  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX document_object_last_seen ON document_object (last_seen);
"""

DOWNGRADE = """
DROP TABLE document_object;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
