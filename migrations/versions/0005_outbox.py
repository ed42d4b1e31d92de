"""Transactional outbox: side effects of resource writes, recorded in the same transaction, relayed to workers.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# One row per unit of background work (e.g. one notification to one recipient of a CommunicationRequest).
# `state` moves pending -> queued (handed to the broker) -> sending (an attempt in flight) -> done | dead,
# or to cancelled; a retry puts it back to pending with a later `due_at`. `lease_until` bounds how long a
# queued or sending row may stay so before the relay hands it out again: a lost broker message or a
# crashed worker delays the work, never loses it. Due times live here, not in the broker, so scheduled
# work survives restarts of everything.
UPGRADE = """
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    resource_type text        NOT NULL,
    fhir_id       text        NOT NULL,
    target        text        NOT NULL DEFAULT '',
    priority      smallint    NOT NULL DEFAULT 3,
    due_at        timestamptz NOT NULL DEFAULT now(),
    state         text        NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'queued', 'sending', 'done', 'dead', 'cancelled')),
    attempts      integer     NOT NULL DEFAULT 0,
    lease_until   timestamptz,
    attempt_ref   text,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- At most one live row per unit of work, so concurrent writes of the same resource cannot queue it twice.
CREATE UNIQUE INDEX outbox_live ON outbox (topic, resource_type, fhir_id, target)
    WHERE state IN ('pending', 'queued', 'sending');
CREATE INDEX outbox_due ON outbox (priority, due_at, id) WHERE state = 'pending';
CREATE INDEX outbox_leased ON outbox (lease_until) WHERE state IN ('queued', 'sending');
CREATE INDEX outbox_resource ON outbox (resource_type, fhir_id);

-- Wakes the relay as soon as work is committed instead of at its next poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

DOWNGRADE = """
DROP TABLE outbox;
DROP FUNCTION outbox_notify();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
