"""Embeddings: text chunks of resources with their vectors (pgvector, HNSW) and full-text documents, and the
patients whose Consent denies AI processing.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from fhir_server.settings import get_settings

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# One row per chunk of the current version of a resource. The column's dimensions are fixed here from
# FHIR_EMBEDDINGS_DIMENSIONS: changing them (or the provider) is a new migration plus a re-embed, never a
# silent mix; `model` names the provider and model each vector came from, and searches read only the
# configured one. `patients` are the Patient ids whose compartment the resource is in (for consent).
# `embedding_consent` holds one row per active Consent that denies AI processing, written in the
# Consent's own transaction, so a denial takes effect on results the moment it commits.
UPGRADE = """
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE embedding_chunk (
    id             bigserial PRIMARY KEY,
    resource_id    bigint   NOT NULL REFERENCES resource (id) ON DELETE CASCADE,
    resource_type  text     NOT NULL,
    fhir_id        text     NOT NULL,
    version_id     integer  NOT NULL,
    chunk_index    integer  NOT NULL,
    model          text     NOT NULL,
    patients       text[]   NOT NULL DEFAULT '{{}}',
    text           text     NOT NULL,
    document       tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED,
    embedding      vector({dimensions}) NOT NULL,
    UNIQUE (resource_id, chunk_index)
);
CREATE INDEX embedding_chunk_vector ON embedding_chunk USING hnsw (embedding vector_cosine_ops);
CREATE INDEX embedding_chunk_document ON embedding_chunk USING gin (document);
CREATE INDEX embedding_chunk_patients ON embedding_chunk USING gin (patients);

CREATE TABLE embedding_consent (
    consent_id  text PRIMARY KEY,
    patient     text NOT NULL
);
CREATE INDEX embedding_consent_patient ON embedding_consent (patient);
"""

DOWNGRADE = """
DROP TABLE embedding_consent;
DROP TABLE embedding_chunk;
"""


def upgrade() -> None:
    op.execute(UPGRADE.format(dimensions=int(get_settings().embeddings_dimensions)))


def downgrade() -> None:
    op.execute(DOWNGRADE)
