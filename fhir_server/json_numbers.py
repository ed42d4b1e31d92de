"""JSON that keeps how decimals were written (`1.50`, `1e2`): a FHIR decimal carries its precision."""

import json
import re
from typing import Any

import orjson

# A number (after `:`, `,` or `[`) that a float would print differently: trailing zeros in a fraction
# (`1.50`, `2.00`; `1.0` prints the same), an exponent, or more digits than a double keeps. A match
# inside a string only costs the slower path; the scan costs about as much as orjson's parse of
# the body, small beside a write.
_INEXACT = re.compile(rb"[:,\[]\s*-?(?:\d+\.(?:\d*[1-9]0+|00+)(?=\s*[,\]}])|\d+(?:\.\d+)?[eE]|\d*\.\d{15}|\d{16})")


class ExactNumber(float):
    """A float that remembers its JSON text; `repr` gives the text, so `Decimal(repr(x))` is exact."""

    __slots__ = ("text",)
    text: str

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _number(text: str) -> float:
    number = float(text)
    if repr(number) == text:
        return number
    exact = ExactNumber(number)
    exact.text = text
    return exact


def loads(raw: bytes) -> Any:
    """Parse JSON like orjson (same errors); numbers a float would alter come back as `ExactNumber`."""
    parsed = orjson.loads(raw)
    if not _INEXACT.search(raw):
        return parsed
    return json.loads(raw, parse_float=_number)


def _default(value: Any) -> Any:
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, option: int | None = None) -> bytes:
    """orjson.dumps that writes an `ExactNumber` as it was written."""
    return orjson.dumps(value, default=_default, option=option)
