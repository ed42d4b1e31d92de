"""The code systems, extensions and identifier systems of tasks and workflows (defined under terminology/)."""

from typing import Any

TASK_FLAG = "urn:fhir-server:CodeSystem/task-flag"
"""meta.tag codes the worker puts on Tasks: `overdue`."""
AUTOMATION = "urn:fhir-server:CodeSystem/task-automation"
"""Task.code of Tasks the worker carries out itself when they fall due."""
RECURRENCE_EXTENSION = "urn:fhir-server:StructureDefinition/task-recurrence"
"""On a template Task: valueString, an RFC 5545 recurrence (`DTSTART:...` line optional, then `RRULE:...`)."""
OCCURRENCE_OF_EXTENSION = "urn:fhir-server:StructureDefinition/task-occurrence-of"
"""On a Task made from a recurring template: valueReference to the template."""
OCCURRENCE_IDENTIFIER = "urn:fhir-server:task-occurrence"
"""Task.identifier of an occurrence: `<template id>/<occurrence instant>`."""

OVERDUE = "overdue"
AUTOMATION_CODES = frozenset({"send-appointment-reminder", "send-message"})


def coding_in(concept: Any, system: str) -> str | None:
    """The code of the first coding of `concept` (a CodeableConcept) in `system`."""
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == system and isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def extension_value(resource: dict[str, Any], url: str, kind: str) -> Any:
    for extension in resource.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension.get("value" + kind)
    return None


def has_tag(resource: dict[str, Any], system: str, code: str) -> bool:
    return any(tag.get("system") == system and tag.get("code") == code
               for tag in (resource.get("meta") or {}).get("tag") or [] if isinstance(tag, dict))


def set_tag(resource: dict[str, Any], system: str, code: str, present: bool) -> None:
    meta = resource.setdefault("meta", {})
    tags = [tag for tag in meta.get("tag") or [] if not (tag.get("system") == system and tag.get("code") == code)]
    if present:
        tags.append({"system": system, "code": code})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    if not meta:
        resource.pop("meta")
