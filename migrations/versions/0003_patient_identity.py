"""Patient identity: the MRN sequence, the record of merged (replaced) patients, and $match blocking indexes.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# $match finds candidates through these partial expression indexes on the search-index tables (and
# search_date's own range index for birth dates), so a blocking query reads a handful of index entries
# instead of every Patient. Each must use exactly the expression of the query in
# fhir_server/identity/blocking.py.
UPGRADE = """
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;

-- Server-assigned MRNs: a sequence never hands out a number twice, even across rolled-back creates.
CREATE SEQUENCE patient_mrn_seq;

-- One row per merged-away (replaced) Patient. Keyed by resource row ids, so truncating `resource`
-- (CASCADE) clears it, and a write can be checked against it with one primary-key probe per reference.
CREATE TABLE patient_replaced (
    source      bigint      PRIMARY KEY REFERENCES resource (id),
    target      bigint      NOT NULL REFERENCES resource (id),
    provenance  bigint      NOT NULL REFERENCES resource (id),
    replaced_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX patient_match_phone ON search_token ((right(regexp_replace(code, '[^0-9]', '', 'g'), 9)))
    WHERE resource_type = 'Patient' AND param = 'phone';
CREATE INDEX patient_match_email ON search_token ((lower(code)))
    WHERE resource_type = 'Patient' AND param = 'email';
CREATE INDEX patient_match_family ON search_string ((dmetaphone(value)), resource_id)
    WHERE resource_type = 'Patient' AND param = 'family';
"""

DOWNGRADE = """
DROP INDEX patient_match_family, patient_match_email, patient_match_phone;
DROP TABLE patient_replaced;
DROP SEQUENCE patient_mrn_seq;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
