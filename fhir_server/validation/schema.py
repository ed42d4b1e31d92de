"""Structure check against the official R4 JSON Schema: a compiled validator says yes fast, jsonschema says why not."""

import hashlib
import importlib
import logging
import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import orjson
from jsonschema import Draft6Validator, ValidationError, validators

from fhir_server.errors import Issue
from fhir_server.paths import RESOURCES_DIR

log = logging.getLogger(__name__)

SCHEMA_PATH = RESOURCES_DIR / "fhir.schema.json"
GENERATED_MODULE = f"{__package__}.generated_schema"
SHORT = 120


@cache
def schema() -> dict[str, Any]:
    """The official schema with one erratum: canonical elements lack the `_name` property that carries their
    extensions (the official examples use it, e.g. StructureDefinition._baseDefinition), so add it as for every
    other primitive."""
    document = orjson.loads(SCHEMA_PATH.read_bytes())
    canonical = "#/definitions/canonical"
    for definition in document["definitions"].values():
        properties = definition.get("properties", {})
        for name, spec in list(properties.items()):
            if f"_{name}" in properties:
                continue
            if spec.get("$ref") == canonical:
                properties[f"_{name}"] = {"$ref": "#/definitions/Element"}
            elif spec.get("items", {}).get("$ref") == canonical:
                properties[f"_{name}"] = {"type": "array", "items": {"$ref": "#/definitions/Element"}}
    return document


@cache
def schema_sha256() -> str:
    """Identifies the schema the compiled validator was generated from."""
    return hashlib.sha256(orjson.dumps(schema(), option=orjson.OPT_SORT_KEYS)).hexdigest()


@cache
def resource_types() -> frozenset[str]:
    return frozenset(schema()["discriminator"]["mapping"])


@cache
def fast_validators() -> dict[str, Callable[[Any], Any]] | None:
    """The generated validator per resource type, or None when it is missing or was built from another schema."""
    hint = "run `python -m fhir_server.validation.build`"
    try:
        module = importlib.import_module(GENERATED_MODULE)
    except ImportError:
        log.warning("no compiled R4 schema; validating with jsonschema only (%s)", hint)
        return None
    if module.SCHEMA_SHA256 != schema_sha256():
        log.warning("compiled R4 schema is stale; validating with jsonschema only (%s)", hint)
        return None
    return module.RESOURCE_VALIDATORS


@cache
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a schema pattern with the meaning the FHIR tooling (Java) gives it: `\\s`/`\\S` are ASCII, so a
    no-break space is allowed in a string, and `$` is the very end, not also before a final newline."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    # Patterns also sit on boolean and number types; a string there is already reported as the wrong type.
    if not isinstance(instance, str) or not validator.is_type(instance, schema.get("type", "string")):
        return
    if not compiled_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _one_of(validator: Any, one_of: list[Any], instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    # The only oneOf is ResourceList (one branch per resource type): follow the resourceType instead of trying
    # ~150 branches per contained resource or Bundle entry, which takes minutes on the large Bundles.
    resource_type = instance.get("resourceType") if isinstance(instance, dict) else None
    if isinstance(resource_type, str) and resource_type in resource_types():
        yield from validator.descend(instance, {"$ref": f"#/definitions/{resource_type}"})
    else:
        yield ValidationError(f"Expected a resource with a known resourceType, got {_short(instance)}")


@cache
def _detailed_validator() -> Draft6Validator:
    base = validators.validator_for(schema(), default=Draft6Validator)
    return validators.extend(base, {"pattern": _pattern, "oneOf": _one_of})(schema())


@cache
def _definition_names() -> dict[int, str]:
    """Definition objects by identity, to name the FHIR type a failing value should have been."""
    return {id(definition): name for name, definition in schema()["definitions"].items()}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHORT else text[:SHORT] + "..."


def _fhir_path(base: str, path: Any) -> str:
    text = base
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text


def _issues(error: ValidationError, base: str) -> Iterator[Issue]:
    path = _fhir_path(base, error.absolute_path)
    instance = error.instance
    if error.validator == "required":
        return  # the element walk reports every missing element (elements.py), at the missing element's path
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        for name in instance:
            if name not in known:
                yield Issue("structure", f"Unknown element '{name}'", expression=(f"{path}.{name}",))
    elif error.validator == "pattern":
        fhir_type = _definition_names().get(id(error.schema), "value")
        yield Issue("value", f"{_short(instance)} is not a valid {fhir_type}", expression=(path,))
    elif error.validator == "enum":
        yield Issue("code-invalid", f"{_short(instance)} is not one of {error.validator_value}", expression=(path,))
    else:
        message = error.message if len(error.message) <= 2 * SHORT else error.message[:2 * SHORT] + "..."
        yield Issue("structure", message, expression=(path,))


def detailed_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Every schema violation of `resource` as `resource_type`, in document order."""
    validator = _detailed_validator().evolve(schema={"$ref": f"#/definitions/{resource_type}"})
    errors = sorted(validator.iter_errors(resource), key=lambda error: list(map(str, error.absolute_path)))
    return [issue for error in errors for issue in _issues(error, resource_type)]


def schema_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Schema violations of a resource whose resourceType is known to be `resource_type`."""
    fast = fast_validators()
    if fast is not None:
        try:
            fast[resource_type](resource)
            return []
        except Exception:  # noqa: BLE001 - any failure of the fast check is settled by the exact one below
            pass
    return detailed_issues(resource, resource_type)
