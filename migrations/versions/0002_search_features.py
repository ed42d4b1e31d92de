"""Search features: composite element keys, UCUM canonical quantities, full text, and terminology concepts.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Composite parameters: each component is an ordinary typed row whose `param` is `<code>$<n>` (n = the
# component's position) and whose `element` numbers the element it came from within the resource. A
# composite search joins the component rows on (resource_id, element), so both parts of one element
# must match together, and every component keeps its typed B-tree index. `element` is NULL elsewhere.
#
# Quantities whose system is UCUM and whose unit the small conversion table knows also carry the value
# in the canonical unit (g, m, L, mol, s and their quotients), so 1 kg and 1000 g compare equal.
#
# search_text holds the narrative (`_text`) and all string values (`_content`), already lower-cased and
# without accents; the tsvector is generated from it, so the storage layer writes it like any other row.
#
# search_concept holds the concepts of stored CodeSystems (one row per concept and each of its
# ancestors, itself included) and the members of stored ValueSets (explicit codes; `code` NULL for a
# whole system, `ancestor` set for an is-a filter): `:in`, `:not-in`, `:below` and `:above` read it.
UPGRADE = """
ALTER TABLE search_string ADD COLUMN element integer;
ALTER TABLE search_token ADD COLUMN element integer;
ALTER TABLE search_date ADD COLUMN element integer;
ALTER TABLE search_number ADD COLUMN element integer;
ALTER TABLE search_uri ADD COLUMN element integer;
ALTER TABLE search_reference ADD COLUMN element integer;
ALTER TABLE search_quantity ADD COLUMN canonical_code text, ADD COLUMN canonical_value numeric,
    ADD COLUMN canonical_low numeric, ADD COLUMN canonical_high numeric, ADD COLUMN element integer;
-- The lookups searches make (value → resource ids, target → referrers, referrer → targets) carry what
-- they return, so chains, _has and plain filters can be answered from the index alone.
DROP INDEX search_token_code, search_string_value, search_reference_param, search_reference_resource;
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system) INCLUDE (resource_id);
CREATE INDEX search_string_value ON search_string (resource_type, param, value text_pattern_ops) INCLUDE (resource_id);
CREATE INDEX search_reference_param ON search_reference (resource_type, param, target_id, target_type)
    INCLUDE (resource_id);
CREATE INDEX search_reference_resource ON search_reference (resource_id) INCLUDE (param, target_type, target_id);
-- A composite joins its other components by (resource_id, element): with the values included, that
-- probe reads the index only.
DROP INDEX search_quantity_resource;
CREATE INDEX search_quantity_resource ON search_quantity (resource_id)
    INCLUDE (param, element, low, high, canonical_code, canonical_low, canonical_high);

-- Prefixes compare the stored range: eq/lt/le/sa read `low`, gt/ge/eb read `high`.
CREATE INDEX search_number_low ON search_number (resource_type, param, low);
CREATE INDEX search_number_high ON search_number (resource_type, param, high);
CREATE INDEX search_quantity_low ON search_quantity (resource_type, param, low);
CREATE INDEX search_quantity_high ON search_quantity (resource_type, param, high);
CREATE INDEX search_quantity_canonical_low ON search_quantity (resource_type, param, canonical_code, canonical_low)
    WHERE canonical_code IS NOT NULL;
CREATE INDEX search_quantity_canonical_high ON search_quantity (resource_type, param, canonical_code, canonical_high)
    WHERE canonical_code IS NOT NULL;

CREATE TABLE search_text (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    param         text   NOT NULL,
    value         text   NOT NULL,
    document      tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, value)) STORED
);
CREATE INDEX search_text_document ON search_text USING gin (document);
CREATE INDEX search_text_resource ON search_text (resource_id);

CREATE TABLE search_concept (
    resource_id   bigint NOT NULL,
    resource_type text   NOT NULL,
    url           text   NOT NULL,
    system        text,
    code          text,
    ancestor      text
);
CREATE INDEX search_concept_url ON search_concept (url, resource_type);
CREATE INDEX search_concept_ancestor ON search_concept (system, ancestor);
CREATE INDEX search_concept_code ON search_concept (code, system);
CREATE INDEX search_concept_resource ON search_concept (resource_id);
"""

DOWNGRADE = """
DROP INDEX search_token_code, search_string_value, search_reference_param, search_reference_resource,
    search_quantity_resource;
CREATE INDEX search_quantity_resource ON search_quantity (resource_id);
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system);
CREATE INDEX search_string_value ON search_string (resource_type, param, value text_pattern_ops);
CREATE INDEX search_reference_param ON search_reference (resource_type, param, target_id, target_type);
CREATE INDEX search_reference_resource ON search_reference (resource_id);
DROP TABLE search_concept, search_text;
DROP INDEX search_number_low, search_number_high, search_quantity_low, search_quantity_high,
    search_quantity_canonical_low, search_quantity_canonical_high;
ALTER TABLE search_quantity DROP COLUMN canonical_code, DROP COLUMN canonical_value, DROP COLUMN canonical_low,
    DROP COLUMN canonical_high, DROP COLUMN element;
ALTER TABLE search_reference DROP COLUMN element;
ALTER TABLE search_uri DROP COLUMN element;
ALTER TABLE search_number DROP COLUMN element;
ALTER TABLE search_date DROP COLUMN element;
ALTER TABLE search_token DROP COLUMN element;
ALTER TABLE search_string DROP COLUMN element;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
