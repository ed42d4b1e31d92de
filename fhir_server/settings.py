"""The server's configuration: one typed settings object, read once from `FHIR_*` variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    auth: Literal["none", "smart"] = "none"
    """`smart` requires a SMART/OAuth2 bearer token on every request; `none` is refused beyond loopback."""
    database_url: str | None = None
    """PostgreSQL (with pgvector) to use; unset means an embedded server in `data_dir`."""
    data_dir: Path = Path(".fhir-data")
    base_path: str = "/fhir"
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
    mrn_system: str = "urn:fhir-server:mrn"
    """Identifier.system of the medical record numbers the server assigns to Patients created without one."""
    mrn_format: str = "MRN-{year}{number:06d}"
    """str.format template of an assigned MRN: `year` (of assignment) and `number` (from a sequence)."""
    match_max_candidates: int = 200
    """Patient/$match scores at most this many blocked candidates per request."""
    default_phone_region: str = "US"
    """Region for telecom phone numbers written without an international prefix."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
