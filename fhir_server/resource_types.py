"""The R4 resource types the server knows, read from the vendored R4 JSON Schema."""

import re
from functools import lru_cache

import orjson

from fhir_server.errors import FHIRError
from fhir_server.paths import RESOURCES_DIR

ID_PATTERN = re.compile(r"[A-Za-z0-9\-\.]{1,64}")


@lru_cache(maxsize=1)
def resource_types() -> frozenset[str]:
    schema = orjson.loads((RESOURCES_DIR / "fhir.schema.json").read_bytes())
    return frozenset(schema["discriminator"]["mapping"])


def require_known_type(resource_type: str) -> str:
    if resource_type not in resource_types():
        raise FHIRError.of(404, "not-supported", f"Unknown resource type '{resource_type}'")
    return resource_type


def require_valid_id(fhir_id: str) -> str:
    if not ID_PATTERN.fullmatch(fhir_id):
        raise FHIRError.of(400, "invalid", f"'{fhir_id}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)")
    return fhir_id
