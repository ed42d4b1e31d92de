"""Value sets for `:in` / `:not-in` beyond those stored on the server: the vendored R4 required bindings."""

import json
from functools import lru_cache

from fhir_server.paths import TERMINOLOGY_DIR

REQUIRED_VALUE_SETS_FILE = TERMINOLOGY_DIR / "required-value-sets.json"


@lru_cache(maxsize=1)
def _vendored() -> dict[str, dict[str, list[str]]]:
    return json.loads(REQUIRED_VALUE_SETS_FILE.read_text())["valueSets"]


def vendored_members(url: str) -> tuple[list[str], list[str]]:
    """The (systems, codes) of a vendored value set's expansion, as two parallel lists; empty if unknown.

    `url|version` is looked up without its version: only R4 (4.0.1) value sets are vendored.
    """
    expansion = _vendored().get(url.partition("|")[0], {})
    systems = [system for system, codes in expansion.items() for _ in codes]
    codes = [code for found in expansion.values() for code in found]
    return systems, codes
