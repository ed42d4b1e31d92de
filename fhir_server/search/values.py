"""FHIR search value semantics shared by index extraction and querying: strings, date and number ranges, references."""

import re
import unicodedata
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

FAR_PAST = datetime(1, 1, 1, tzinfo=timezone.utc)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# FHIR date, dateTime and instant, and the partial forms search allows (e.g. minutes without seconds).
_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# Normalised strings are cut to this length: a B-tree index entry must stay under ~2,700 bytes.
STRING_INDEX_LENGTH = 512


def normalize_string(value: str, limit: int | None = STRING_INDEX_LENGTH) -> str:
    """Lower case without accents, cut to the indexed length (`limit`): how string search compares (R4
    'case and accent insensitive')."""
    if value.isascii():
        return value[:limit].lower()
    decomposed = unicodedata.normalize("NFKD", value[:limit])
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()[:limit]


def date_range(value: str) -> tuple[datetime, datetime]:
    """The inclusive [low, high] instants a (partial) date or dateTime covers; raises ValueError.

    Values without a time zone are read as UTC.
    """
    match = _DATE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = timezone.utc
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    y = int(year)
    if month is None:
        low = datetime(y, 1, 1, tzinfo=tz)
        return low, _end(datetime(y + 1, 1, 1, tzinfo=tz) if y < 9999 else None)
    m = int(month)
    if day is None:
        low = datetime(y, m, 1, tzinfo=tz)
        following = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=tz) if (y, m) != (9999, 12) else None
        return low, _end(following)
    low = datetime(y, m, int(day), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=tz)
    if hour is None:
        step = timedelta(days=1)
    elif second is None:
        step = timedelta(minutes=1)
    elif fraction is None:
        step = timedelta(seconds=1)
    else:
        low = low.replace(microsecond=int(fraction[:6].ljust(6, "0")))
        step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
    try:
        return low, low + step - _MICROSECOND
    except OverflowError:
        return low, FAR_FUTURE


def _end(following: datetime | None) -> datetime:
    return following - _MICROSECOND if following is not None else FAR_FUTURE


def decimal_of(value: object) -> Decimal:
    """A JSON number (or its text) as a Decimal that keeps the written precision; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, (Decimal, int)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
        if number.is_finite():
            return number
    raise ValueError(f"not a number: {value!r}")


def number_range(number: Decimal) -> tuple[Decimal, Decimal]:
    """The range the precision of `number` implies: 100 → [99.5, 100.5), 1.50 → [1.495, 1.505)."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return number - half, number + half


class ReferenceTarget(NamedTuple):
    """What a reference points to: `Type/id` as (type, id, None); an absolute URL as (type?, id?, url)."""

    target_type: str | None
    target_id: str | None
    target_url: str | None


def reference_target(reference: str) -> ReferenceTarget | None:
    """Parse a reference string; None for contained (`#x`) and empty references."""
    if not reference or reference.startswith("#"):
        return None
    if "://" in reference or reference.startswith("urn:"):
        return ReferenceTarget(*_type_and_id(reference.split("/")), reference)
    target_type, target_id = _type_and_id(reference.split("/"))
    if target_type is None:
        return ReferenceTarget(None, None, reference)
    return ReferenceTarget(target_type, target_id, None)


def _type_and_id(parts: list[str]) -> tuple[str | None, str | None]:
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and _RESOURCE_TYPE.fullmatch(parts[-2]) and _FHIR_ID.fullmatch(parts[-1]):
        return parts[-2], parts[-1]
    return None, None


UCUM = "http://unitsofmeasure.org"
# A small UCUM table, enough for the common clinical units: metric prefixes on gram, metre, litre, mole
# and second, the usual time units, two customary units, and quotients of these (mg/dL, mmol/L, ...).
# Units outside it (Cel, [degF], %, [iU], mo, a, annotations like {beats}/min) are compared as written.
_UCUM_PREFIXES = {"": 1, "k": 1000, "h": 100, "da": 10, "d": Decimal("0.1"), "c": Decimal("0.01"),
                  "m": Decimal("0.001"), "u": Decimal("1e-6"), "n": Decimal("1e-9"), "p": Decimal("1e-12")}
_UCUM_BASES = ("mol", "g", "m", "L", "l", "s")
_UCUM_SPECIAL = {"min": (Decimal(60), "s"), "h": (Decimal(3600), "s"), "d": (Decimal(86400), "s"),
                 "wk": (Decimal(604800), "s"), "[lb_av]": (Decimal("453.59237"), "g"),
                 "[oz_av]": (Decimal("28.349523125"), "g"), "[in_i]": (Decimal("0.0254"), "m"),
                 "[ft_i]": (Decimal("0.3048"), "m")}


def _ucum_atom(unit: str) -> tuple[Decimal, str] | None:
    if unit in _UCUM_SPECIAL:
        return _UCUM_SPECIAL[unit]
    for base in _UCUM_BASES:
        if unit.endswith(base) and unit[:-len(base)] in _UCUM_PREFIXES:
            return Decimal(_UCUM_PREFIXES[unit[:-len(base)]]), "L" if base == "l" else base
    return None


def ucum_canonical(code: str) -> tuple[Decimal, str] | None:
    """(factor, canonical unit) for a UCUM code the table knows: `mg/dL` → (0.01, 'g/L'); else None."""
    numerator, _, denominator = code.partition("/")
    top = _ucum_atom(numerator)
    if top is None or "/" in denominator:
        return None
    if not denominator:
        return top
    bottom = _ucum_atom(denominator)
    if bottom is None:
        return None
    return top[0] / bottom[0], f"{top[1]}/{bottom[1]}"
