"""Core storage: current resources, every version, typed search-index tables and the reference table.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Index tables hold rows for the current version of each resource only; they are rewritten in the
# same transaction as the resource. `resource_type` is repeated there so that a search filters on
# (resource_type, param, value) without joining `resource` first.
UPGRADE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE resource (
    id            bigserial PRIMARY KEY,
    resource_type text        NOT NULL,
    fhir_id       text        NOT NULL,
    version_id    integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    content       bytea,
    UNIQUE (resource_type, fhir_id)
);
CREATE INDEX resource_type_updated ON resource (resource_type, last_updated, id);

CREATE TABLE resource_version (
    resource_id   bigint      NOT NULL REFERENCES resource (id),
    version_id    integer     NOT NULL,
    resource_type text        NOT NULL,
    fhir_id       text        NOT NULL,
    last_updated  timestamptz NOT NULL,
    method        text        NOT NULL,
    content       bytea,
    PRIMARY KEY (resource_id, version_id)
);
CREATE INDEX resource_version_updated ON resource_version (last_updated);
CREATE INDEX resource_version_type_updated ON resource_version (resource_type, last_updated);
CREATE INDEX resource_version_instance ON resource_version (resource_type, fhir_id, version_id);

CREATE TABLE search_string (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    param         text   NOT NULL,
    value         text   NOT NULL,
    value_exact   text   NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, value text_pattern_ops);
CREATE INDEX search_string_trgm ON search_string USING gin (value gin_trgm_ops);
CREATE INDEX search_string_resource ON search_string (resource_id);

CREATE TABLE search_token (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    param         text   NOT NULL,
    system        text,
    code          text,
    text          text
);
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_resource ON search_token (resource_id);

CREATE TABLE search_date (
    resource_id   bigint      NOT NULL,
    resource_type text        NOT NULL,
    param         text        NOT NULL,
    low           timestamptz NOT NULL,
    high          timestamptz NOT NULL
);
CREATE INDEX search_date_range ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_resource ON search_date (resource_id);

CREATE TABLE search_number (
    resource_id   bigint  NOT NULL,
    resource_type text    NOT NULL,
    param         text    NOT NULL,
    value         numeric NOT NULL,
    low           numeric NOT NULL,
    high          numeric NOT NULL
);
CREATE INDEX search_number_value ON search_number (resource_type, param, value);
CREATE INDEX search_number_resource ON search_number (resource_id);

CREATE TABLE search_quantity (
    resource_id   bigint  NOT NULL,
    resource_type text    NOT NULL,
    param         text    NOT NULL,
    value         numeric NOT NULL,
    low           numeric NOT NULL,
    high          numeric NOT NULL,
    system        text,
    code          text,
    unit          text
);
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, value);
CREATE INDEX search_quantity_resource ON search_quantity (resource_id);

CREATE TABLE search_uri (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    param         text   NOT NULL,
    value         text   NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, value);
CREATE INDEX search_uri_resource ON search_uri (resource_id);

-- Every reference element of the current version: serves search, _include/_revinclude, chaining,
-- _has, delete checks and $merge. `param` is the search parameter code, or NULL for a reference
-- that no search parameter covers (kept for referential integrity and reference rewrites).
CREATE TABLE search_reference (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    param         text,
    target_type   text,
    target_id     text,
    target_url    text
);
CREATE INDEX search_reference_param ON search_reference (resource_type, param, target_id, target_type);
CREATE INDEX search_reference_target ON search_reference (target_type, target_id);
CREATE INDEX search_reference_resource ON search_reference (resource_id);
"""

DOWNGRADE = """
DROP TABLE search_reference, search_uri, search_quantity, search_number, search_date, search_token,
           search_string, resource_version, resource;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
