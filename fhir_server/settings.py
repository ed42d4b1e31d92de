"""The server's configuration: one typed settings object, read once from `FHIR_*` variables."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DOCUMENT_MIME_TYPES = ["application/pdf", "image/jpeg", "image/png", "image/heic", "image/tiff", "text/plain",
                       "audio/mpeg", "audio/ogg", "video/mp4"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    auth: Literal["none", "smart"] = "none"
    """`smart` requires a SMART/OAuth2 bearer token on every request; `none` is refused beyond loopback."""
    database_url: str | None = None
    """PostgreSQL (with pgvector) to use; unset means an embedded server in `data_dir`."""
    data_dir: Path = Path(".fhir-data")
    embedded_shared_buffers: str = "512MB"
    """shared_buffers of the embedded PostgreSQL (its own default, 128MB, keeps a 100k-patient database on disk)."""
    base_path: str = "/fhir"

    # Tenants: `url` serves each tenant at base_path/{tenant}, in its own database schema
    # (`fhir-server tenants add NAME`); `none` is one implicit tenant at base_path.
    tenancy: Literal["none", "url"] = "none"

    max_body_bytes: int = 32 * 1024 * 1024
    max_bundle_entries: int = 10_000
    default_page_size: int = 20
    max_page_size: int = 1_000
    enforce_referential_integrity_on_delete: bool = True
    allow_multiple_delete: bool = False
    db_pool_size: int = 10
    auth_token_lifetime: int = 300
    """Seconds an access token (and an id token) stays valid."""
    auth_key_rotation_days: float = 30
    """A new signing key is made when the newest is this old; the old one stays in the JWKS until its tokens expire."""
    auth_online_refresh_lifetime: int = 3600
    """Seconds an `online_access` refresh token chain lasts from the login (rotation does not extend it)."""
    auth_offline_refresh_lifetime: int = 90 * 24 * 3600
    """Seconds an `offline_access` refresh token lasts; each rotation starts a new period."""
    cors_origins: Annotated[list[str], NoDecode] = []
    """Origins of browser apps allowed to call the FHIR API and the token endpoint (comma-separated or a JSON
    list; `*` = any); unset means no CORS headers."""
    auth_max_failed_attempts: int = 5
    """Failed sign-ins (login page) or client authentications (token, introspection, revocation, launch)
    allowed per user name or client id and IP address within `auth_failure_window`; further attempts get
    429 with Retry-After until the oldest of them leaves the window. 0 turns the limit off."""
    auth_failure_window: int = 900
    """Seconds a failed sign-in or client authentication counts against `auth_max_failed_attempts`."""
    mrn_system: str = "urn:fhir-server:mrn"
    """Identifier.system of the medical record numbers the server assigns to Patients created without one."""
    mrn_format: str = "MRN-{year}{number:06d}"
    """str.format template of an assigned MRN: `year` (of assignment) and `number` (from a sequence)."""
    match_max_candidates: int = 200
    """Patient/$match scores at most this many blocked candidates per request."""
    merge_sync_limit: int = 500
    """Patient/$merge rewrites up to this many referencing resources in the request; above it (or with
    `Prefer: respond-async`) it answers 202 with a Task that a worker completes, in batches of this size."""
    merge_lock_timeout: float = 10.0
    """Seconds a merge waits for a resource another transaction holds: then the request answers 409, and a
    background batch is tried again later (up to `merge_max_attempts` times before the merge is undone)."""
    merge_max_attempts: int = 5
    """Tries of one background merge batch that meets locked resources before the merge gives up and is undone."""

    # Background work (outbox relay, Dramatiq workers) and notifications.
    redis_url: str | None = None
    """Dramatiq broker for `fhir-server worker`; unset means the workers run inside `fhir-server serve`."""
    background: Literal["auto", "in-process", "off"] = "auto"
    """Where `serve` runs the relay and workers: `auto` = in-process when `redis_url` is unset."""
    worker_threads: int = 4
    outbox_poll_seconds: float = 1.0
    """The relay needs no polling (LISTEN outbox, and a timer at the next due time): this is its wait before
    trying again after an error, or before looking again at due work that another relay is claiming."""
    outbox_redeliver_seconds: float = 300
    """Work handed to the broker but not started within this time is handed out again."""
    send_lease_seconds: float = 120
    """An attempt still unfinished after this long is taken as a crashed worker: outcome unknown, not resent."""
    retry_max_attempts: dict[str, int] = {"sms": 5, "whatsapp": 5, "email": 5}
    """Attempts per channel before a notification is dead-lettered (JSON object)."""
    retry_base_seconds: float = 30
    """Delay before the first retry; each further retry doubles it (with up to 10% jitter)."""
    retry_max_seconds: float = 3600
    default_phone_region: str = "US"
    """Region for telecom phone numbers written without an international prefix."""
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    """Sender of SMS, E.164."""
    twilio_whatsapp_from: str | None = None
    """Sender of WhatsApp messages, E.164 (without the `whatsapp:` prefix)."""
    twilio_api_base: str | None = None
    """Replaces https://api.twilio.com (tests, proxies)."""
    twilio_status_callback_url: str | None = None
    """Public URL of POST /twilio/status, passed to Twilio with every message; unset = no callbacks. With tenants,
    `{tenant}` in it becomes the sending tenant's name (https://host/fhir/{tenant}/twilio/status)."""
    twilio_webhook_base_url: str | None = None
    """Public scheme://host[:port] Twilio calls, for signature checks behind a proxy; unset = the request's own."""
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_ca_file: str | None = None
    """CA bundle to verify the SMTP server's certificate with (default: the system's)."""
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    """The From address of e-mails, over SMTP and over SES."""
    smtp_timeout: float = 10
    email_subject: str = "New message"
    email_include_content: bool = False
    """Put the CommunicationRequest's text in e-mails; off, an e-mail says only "You have a new message"."""
    email_provider: Literal["smtp", "ses"] = "smtp"
    """How e-mail leaves: SMTP (`smtp_*`) or Amazon SES (SESv2 SendEmail through boto3, `ses_*`)."""
    ses_region: str | None = None
    ses_endpoint_url: str | None = None
    """SES-compatible endpoint; unset means AWS. Credentials come from boto3's chain (AWS_* variables, roles)."""
    ses_configuration_set: str | None = None

    # Documents: the bytes of Binary resources live in an object store, never in PostgreSQL.
    s3_bucket: str | None = None
    """S3 bucket for document bytes; unset means a filesystem store under `document_dir`."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, ...); unset means AWS."""
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    """Unset means boto3's own credential chain (AWS_* variables, profiles, instance roles)."""
    s3_secret_access_key: SecretStr | None = None
    document_dir: Path | None = None
    """Filesystem store of document bytes when no bucket is set; unset means `data_dir`/documents."""
    presign_seconds: int = 600
    """How long a presigned download URL from DocumentReference/$download stays valid."""
    document_max_bytes: int = 50 * 1024 * 1024
    document_mime_types: Annotated[list[str], NoDecode] = DOCUMENT_MIME_TYPES
    """Content types a Binary may have (comma-separated or a JSON list); checked against the bytes' signature."""

    # Embeddings and $semantic-search.
    embeddings: Literal["hashed", "openai", "local", "off"] = "hashed"
    """Who turns text into vectors: `hashed` (built in, offline, deterministic: hashed words and character
    n-grams), `openai` (any OpenAI-compatible server), `local` (all-MiniLM-L6-v2, extra `[local-embeddings]`),
    or `off` (nothing is embedded)."""
    embeddings_dimensions: int = 384
    """Dimensions of the vector column, fixed by migration 0008 (all-MiniLM-L6-v2 has 384)."""
    embeddings_model: str = "text-embedding-3-small"
    """Model asked of the OpenAI-compatible server (`embeddings=openai`)."""
    openai_base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1; unset means OpenAI's own."""
    openai_api_key: SecretStr | None = None
    embeddings_timeout: float = 30
    embeddings_chunk_chars: int = 800
    """Chunks hold whole sentences up to this many characters (a longer sentence is cut at words)."""
    embeddings_chunk_overlap: int = 150
    """Up to this many characters of trailing sentences are repeated at the start of the next chunk."""
    semantic_vector_weight: float = 1.0
    """Weight of the vector ranking in the reciprocal rank fusion of $semantic-search."""
    semantic_keyword_weight: float = 1.0
    """Weight of the full-text ranking in the same fusion."""
    semantic_min_similarity: float = 0.05
    """Chunks less similar than this (cosine) to the query count for nothing in the vector ranking."""
    semantic_candidates: int = 100
    """Chunks each ranking (vector and full text) contributes before fusion."""

    # Audit: every interaction becomes an AuditEvent (fhir_server/audit/).
    audit_journal_dir: Path | None = None
    """Where each server process appends the audit records of reads before they reach the database (they
    survive a crash of the process); unset means `data_dir`/audit."""
    audit_flush_seconds: float = 0.2
    """How often a server process moves its journal into the database, and the background job turns audit
    records into AuditEvent resources."""
    audit_reads: bool = True
    """False leaves successful reads, searches and histories unaudited: only for measuring what their audit
    costs (bench/cpu.py --audit-overhead); every failure and every write is still audited."""

    @field_validator("document_mime_types", "cors_origins", mode="before")
    @classmethod
    def _split_mime_types(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip().lower() for part in text.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
