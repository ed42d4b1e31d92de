"""Where the conformance data shipped with the server lives on disk."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOURCES_DIR = REPO_ROOT / "resources"
TERMINOLOGY_DIR = REPO_ROOT / "terminology"
MIGRATIONS_DIR = REPO_ROOT / "migrations"
