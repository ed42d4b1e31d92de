"""Outbox wake-ups name their schema, and work made due again wakes the relay too, so it needs no polling.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# The relay (worker/runtime.py) claims work of the tenant whose schema a notification names, and otherwise
# sleeps until the earliest due time or lease it knows of: so every change that makes work claimable
# earlier must notify. New rows did already; a retry put back to pending and a due time moved do now.
UPGRADE = """
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify_pending AFTER UPDATE OF state, due_at ON outbox
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION outbox_notify();
-- The relay's "when is the next work due" reads this.
CREATE INDEX outbox_pending_due ON outbox (due_at) WHERE state = 'pending';
"""

DOWNGRADE = """
DROP INDEX outbox_pending_due;
DROP TRIGGER outbox_notify_pending ON outbox;
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
