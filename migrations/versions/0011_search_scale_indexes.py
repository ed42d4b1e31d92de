"""Search at scale: date ranges found by overlap (GiST), string sort keys read in order, covering indexes.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# A date search bounds both ends of the stored [low, high] range (`birthdate=ge1975-04&birthdate=lt1975-05`
# asks for low < May and high >= April): a B-tree bounds one column only and reads half the table, a GiST
# index on the range finds the overlapping rows directly. btree_gist lets the same index lead with the
# resource type and parameter. A Period may end before it starts: least/greatest keep such a row indexable.
#
# A page of matches is found from indexes alone, then only its own rows are read (search/engine.py,
# `_with_contents`): `resource` and the reference lookups of chains and `_has` get covering indexes, so
# that the hundreds of candidates of a chain are never read from the tables.
#
# `_sort` on a string parameter walks (value, resource_id) in order and stops after one page; the
# text_pattern_ops index serves LIKE prefixes but cannot give the collation's order.
SPAN = "tstzrange(least(low, high), greatest(low, high), '[]')"
"""The range expression of the index; fhir_server/search/query.py compares the same one."""
UPGRADE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX search_date_span ON search_date USING gist (resource_type, param, SPAN);
CREATE INDEX search_string_sort ON search_string (resource_type, param, value, resource_id);
CREATE INDEX resource_current ON resource (id) INCLUDE (resource_type, fhir_id, deleted);
CREATE INDEX resource_current_by_fhir_id ON resource (resource_type, fhir_id) INCLUDE (id, deleted);
DROP INDEX search_reference_param, search_reference_resource;
CREATE INDEX search_reference_param ON search_reference (resource_type, param, target_id, target_type)
    INCLUDE (resource_id, target_url);
CREATE INDEX search_reference_resource ON search_reference (resource_id)
    INCLUDE (resource_type, param, target_type, target_id, target_url);
""".replace("SPAN", SPAN)

DOWNGRADE = """
DROP INDEX search_string_sort, search_date_span, resource_current, resource_current_by_fhir_id,
    search_reference_param, search_reference_resource;
CREATE INDEX search_reference_param ON search_reference (resource_type, param, target_id, target_type)
    INCLUDE (resource_id);
CREATE INDEX search_reference_resource ON search_reference (resource_id) INCLUDE (param, target_type, target_id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
