"""Authorization server: clients, users, signing keys, codes, refresh tokens, launch contexts, revocations.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Codes, refresh tokens and client secrets are stored as SHA-256 digests (they are long random strings,
# so a fast hash suffices); user passwords as argon2 hashes. Rows with an `expires_at` are pruned lazily.
UPGRADE = """
CREATE TABLE auth_signing_key (
    kid              text        PRIMARY KEY,
    alg              text        NOT NULL,
    private_jwk      jsonb       NOT NULL,
    public_jwk       jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- set when a newer key takes over signing; the public key is published until `verifiable_until`
    retired_at       timestamptz,
    verifiable_until timestamptz
);

CREATE TABLE auth_user (
    username      text        PRIMARY KEY,
    password_hash text        NOT NULL,
    fhir_user     text,
    patient       text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_client (
    client_id         text        PRIMARY KEY,
    name              text        NOT NULL,
    client_type       text        NOT NULL
        CHECK (client_type IN ('public', 'confidential-symmetric', 'confidential-asymmetric')),
    secret_hash       text,
    redirect_uris     text[]      NOT NULL DEFAULT '{}',
    scopes            text[]      NOT NULL DEFAULT '{}',
    jwks              jsonb,
    jwks_uri          text,
    pre_approved_user text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_launch (
    launch_id  text        PRIMARY KEY,
    patient    text,
    encounter  text,
    expires_at timestamptz NOT NULL
);

CREATE TABLE auth_code (
    code_hash      text        PRIMARY KEY,
    client_id      text        NOT NULL REFERENCES auth_client (client_id) ON DELETE CASCADE,
    redirect_uri   text        NOT NULL,
    code_challenge text        NOT NULL,
    grant_json     jsonb       NOT NULL,
    expires_at     timestamptz NOT NULL
);

CREATE TABLE auth_refresh_token (
    token_hash text        PRIMARY KEY,
    family     uuid        NOT NULL,
    client_id  text        NOT NULL REFERENCES auth_client (client_id) ON DELETE CASCADE,
    username   text        REFERENCES auth_user (username) ON DELETE CASCADE,
    grant_json jsonb       NOT NULL,
    offline    boolean     NOT NULL,
    used       boolean     NOT NULL DEFAULT false,
    revoked    boolean     NOT NULL DEFAULT false,
    expires_at timestamptz NOT NULL
);
CREATE INDEX auth_refresh_token_family ON auth_refresh_token (family);
CREATE INDEX auth_refresh_token_expires ON auth_refresh_token (expires_at);

-- Revoked access tokens, kept until they would have expired anyway.
CREATE TABLE auth_revoked_token (
    jti        text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX auth_revoked_token_expires ON auth_revoked_token (expires_at);

-- `jti`s of client assertions already used (replay protection), kept until the assertion expires.
CREATE TABLE auth_assertion_jti (
    client_id  text        NOT NULL,
    jti        text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_assertion_jti_expires ON auth_assertion_jti (expires_at);
"""

DOWNGRADE = """
DROP TABLE auth_assertion_jti, auth_revoked_token, auth_refresh_token, auth_code, auth_launch, auth_client,
           auth_user, auth_signing_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
