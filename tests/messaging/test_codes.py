"""The codes notifications write are the ones terminology/messaging-code-systems.json defines."""

import json

from fhir_server.messaging import codes
from fhir_server.paths import TERMINOLOGY_DIR


def test_code_systems_match_the_codes_in_use() -> None:
    bundle = json.loads((TERMINOLOGY_DIR / "messaging-code-systems.json").read_text())
    defined = {entry["resource"]["url"]: {concept["code"] for concept in entry["resource"]["concept"]}
               for entry in bundle["entry"]}
    assert defined[codes.STATUS_REASON] == codes.STATUS_REASONS
    assert defined[codes.MEDIUM] == {code for system, code, _ in codes.CHANNEL_MEDIA.values() if system == codes.MEDIUM}
    assert defined[codes.CONSENT_CATEGORY] == {"communication-preference"}
