"""The OperationDefinitions this server implements, kept as FHIR JSON under resources/operations/."""

from functools import lru_cache
from typing import Any

import orjson

from fhir_server.paths import RESOURCES_DIR

OPERATIONS_DIR = RESOURCES_DIR / "operations"


@lru_cache(maxsize=None)
def operation_definition(name: str) -> dict[str, Any]:
    """The OperationDefinition in resources/operations/`name`.json."""
    return orjson.loads((OPERATIONS_DIR / f"{name}.json").read_bytes())


def canonical(name: str) -> str:
    return operation_definition(name)["url"]
