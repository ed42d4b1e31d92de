"""Descending date sorts: an index on the end of date ranges.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# `_sort=-date` reads a page in the order of the ranges' ends (search/engine.py, _page_rows_in_key_order);
# without this index PostgreSQL sorted every date row of the parameter (`Patient?_sort=-birthdate` page 50
# at 100k Patients: 81 ms).


def upgrade() -> None:
    op.execute("CREATE INDEX search_date_high ON search_date (resource_type, param, high)")


def downgrade() -> None:
    op.execute("DROP INDEX search_date_high")
