"""The server's configuration: one typed settings object, read once from `FHIR_*` variables."""

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
