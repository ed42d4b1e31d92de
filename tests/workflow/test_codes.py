"""The codes workflows and secure messaging write are the ones terminology/workflow-code-systems.json defines."""

import json

from fhir_server.messaging import templates, threads
from fhir_server.paths import TERMINOLOGY_DIR
from fhir_server.worker.dead_letter import BACKGROUND_JOB
from fhir_server.worker.runtime import handlers
from fhir_server.workflow import codes


def test_code_systems_match_the_codes_in_use() -> None:
    bundle = json.loads((TERMINOLOGY_DIR / "workflow-code-systems.json").read_text())
    defined = {entry["resource"]["url"]: {concept["code"] for concept in entry["resource"]["concept"]}
               for entry in bundle["entry"]}
    assert defined[codes.TASK_FLAG] == {codes.OVERDUE}
    assert defined[codes.AUTOMATION] == codes.AUTOMATION_CODES | {"communication-request"}
    assert defined[templates.MESSAGE_CATEGORY] == threads.CATEGORIES
    assert defined[templates.KIND] == {templates.TEMPLATE_CODE}
    assert defined[templates.TEMPLATE_USE] == {"auto-reply"}
    assert defined[BACKGROUND_JOB] == set(handlers())
