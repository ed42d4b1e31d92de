"""Comparing two Patients field by field: normalized features, agreement levels, and the graded score.

The weights, thresholds and rules are data, in `match_rules`; this module only applies them.
"""

import math
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import jellyfish
import phonenumbers
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from fhir_server.identity import match_rules as rules
from fhir_server.settings import get_settings

_NICKNAME_GROUPS: dict[str, frozenset[int]] = {}
for _index, _group in enumerate(rules.NICKNAMES):
    for _name in _group:
        _NICKNAME_GROUPS[_name] = _NICKNAME_GROUPS.get(_name, frozenset()) | {_index}

# Street words written either way; compared in their short form.
_STREET_WORDS = {"street": "st", "road": "rd", "avenue": "ave", "av": "ave", "drive": "dr", "lane": "ln",
                 "boulevard": "blvd", "court": "ct", "place": "pl", "apartment": "apt", "suite": "ste",
                 "north": "n", "south": "s", "east": "e", "west": "w", "strasse": "str", "straße": "str"}


def nickname_forms(name: str) -> set[str]:
    """Every name that stands for `name` (a `name_key`) in the nickname groups; none if it is in no group."""
    return {form for index in _NICKNAME_GROUPS.get(name, ()) for form in rules.NICKNAMES[index]}


def name_key(value: str) -> str:
    """A name compared as letters only: no case, accents, spaces, hyphens or apostrophes."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if ch.isalpha() and not unicodedata.combining(ch)).casefold()


@lru_cache(maxsize=4096)
def phone_key(value: str) -> str | None:
    """The E.164 form of a phone number (numbers without a country code are read in the configured region)."""
    try:
        number = phonenumbers.parse(value, get_settings().default_phone_region)
    except phonenumbers.NumberParseException:
        digits = "".join(ch for ch in value if ch.isdigit())
        return digits or None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _address_line_key(lines: list[str]) -> str:
    words = []
    for line in lines:
        for word in name_key_words(line):
            words.append(_STREET_WORDS.get(word, word))
    return " ".join(words)


def name_key_words(value: str) -> list[str]:
    decomposed = unicodedata.normalize("NFKD", value)
    cleaned = "".join(ch if ch.isalnum() else " " for ch in decomposed if not unicodedata.combining(ch))
    return cleaned.casefold().split()


def postal_key(value: str) -> str:
    return "".join(ch for ch in value if ch.isalnum()).upper()


def _birth_date(value: Any) -> date | None:
    if isinstance(value, str) and len(value) >= 10:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class Features:
    """What matching compares, normalized once per Patient."""

    identifiers: set[tuple[str, str]] = field(default_factory=set)
    current_identifier_systems: dict[str, set[str]] = field(default_factory=dict)
    """Identifiers not marked `old`, by system (the MRN system left out): for the certainly-not rule."""
    families: list[str] = field(default_factory=list)
    givens: list[str] = field(default_factory=list)
    birth_date: date | None = None
    gender: str | None = None
    phones: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    postal_codes: set[str] = field(default_factory=set)
    addresses: set[tuple[str, str]] = field(default_factory=set)
    """(street line key, postal code) pairs."""


def features(patient: dict[str, Any], like: Features | None = None) -> Features:
    """The features of `patient`; with `like` (the query of a comparison) only those `like` has too, since a
    field missing on either side is not compared (phone numbers, the costliest to normalize, in particular)."""
    mrn_system = get_settings().mrn_system
    found = Features()
    if like is None or like.identifiers:
        for identifier in patient.get("identifier") or []:
            if not isinstance(identifier, dict) or not identifier.get("value"):
                continue
            system, value = identifier.get("system") or "", str(identifier["value"])
            found.identifiers.add((system, value))
            if system and system != mrn_system and identifier.get("use") != "old":
                found.current_identifier_systems.setdefault(system, set()).add(value)
    if like is None or like.families or like.givens:
        _names(found, patient.get("name") or [])
    if like is None or like.birth_date:
        found.birth_date = _birth_date(patient.get("birthDate"))
    if patient.get("gender") in ("male", "female") and (like is None or like.gender):
        found.gender = patient["gender"]
    if like is None or like.phones or like.emails:
        for telecom in patient.get("telecom") or []:
            if not isinstance(telecom, dict) or not isinstance(telecom.get("value"), str):
                continue
            if telecom.get("system") == "phone" and (like is None or like.phones):
                key = phone_key(telecom["value"])
                if key:
                    found.phones.add(key)
            elif telecom.get("system") == "email":
                found.emails.add(telecom["value"].strip().lower())
    if like is None or like.postal_codes:
        _addresses(found, patient.get("address") or [])
    return found


def _names(found: Features, names: list[Any]) -> None:
    for name in names:
        if not isinstance(name, dict) or name.get("use") in ("old", "anonymous"):
            continue
        family = name_key(name.get("family") or "")
        if family and family not in found.families:
            found.families.append(family)
        for given in (name.get("given") or [])[:2]:
            key = name_key(given) if isinstance(given, str) else ""
            if key and key not in found.givens:
                found.givens.append(key)


def _addresses(found: Features, addresses: list[Any]) -> None:
    for address in addresses:
        if not isinstance(address, dict):
            continue
        postal = postal_key(address.get("postalCode") or "")
        if postal:
            found.postal_codes.add(postal)
            line = _address_line_key([line for line in address.get("line") or [] if isinstance(line, str)])
            if line:
                found.addresses.add((line, postal))


@lru_cache(maxsize=8192)
def _metaphone(name: str) -> str:
    return jellyfish.metaphone(name)


def _near(a: str, b: str) -> bool:
    if JaroWinkler.similarity(a, b) >= rules.FUZZY_JARO_WINKLER:
        return True
    return min(len(a), len(b)) >= rules.FUZZY_MIN_LENGTH and DamerauLevenshtein.distance(a, b) <= 1


def _family_level(a: str, b: str) -> str:
    if a == b:
        return "exact"
    if _metaphone(a) == _metaphone(b):
        return "phonetic"
    return "fuzzy" if _near(a, b) else "disagree"


def _given_level(a: str, b: str) -> str:
    if a == b:
        return "exact"
    if _NICKNAME_GROUPS.get(a, frozenset()) & _NICKNAME_GROUPS.get(b, frozenset()):
        return "nickname"
    if len(a) == 1 or len(b) == 1:
        return "initial" if a[0] == b[0] else "disagree"
    if _metaphone(a) == _metaphone(b):
        return "phonetic"
    return "fuzzy" if _near(a, b) else "disagree"


def _best(field_name: str, levels: list[str]) -> str:
    weights = rules.WEIGHTS[field_name]
    return max(levels, key=lambda level: weights[level])


def _names_level(left: list[str], right: list[str], family: bool) -> str | None:
    if not left or not right:
        return None
    compare = _family_level if family else _given_level
    return _best("family" if family else "given", [compare(a, b) for a in left for b in right])


def _birth_date_level(a: date, b: date) -> str:
    if a == b:
        return "exact"
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return "transposed"
    if (a.month, a.day) == (b.month, b.day) and abs(a.year - b.year) == 1:
        return "year-off-by-one"
    if sum(x != y for x, y in zip(a.strftime("%Y%m%d"), b.strftime("%Y%m%d"))) == 1:
        return "one-digit"
    return "disagree"


@dataclass(slots=True)
class MatchResult:
    score: float
    grade: str
    levels: dict[str, str]
    """Compared field → agreement level (`disagree` included): the explanation of the score."""
    rule: str | None = None
    """The deterministic rule that made the match certain, or that made it certainly-not."""


# The probabilistic grades, weakest first.
_RANK = {"possible": 0, "probable": 1}


def _set_level(a: set, b: set) -> str | None:
    if not a or not b:
        return None
    return "exact" if a & b else "disagree"


def compare(query: Features, candidate: Features) -> MatchResult:
    """The graded match of `candidate` against `query`."""
    levels: dict[str, str] = {}
    family = _names_level(query.families, candidate.families, family=True)
    given = _names_level(query.givens, candidate.givens, family=False)
    if family != "exact" or given != "exact":
        crossed_family = _names_level(query.givens, candidate.families, family=True)
        crossed_given = _names_level(query.families, candidate.givens, family=False)
        if crossed_family == "exact" and crossed_given == "exact":
            levels["name"] = "swapped"
            family = given = None
    if family:
        levels["family"] = family
    if given:
        levels["given"] = given
    if query.birth_date and candidate.birth_date:
        levels["birthDate"] = _birth_date_level(query.birth_date, candidate.birth_date)
    if query.gender and candidate.gender:
        levels["gender"] = "exact" if query.gender == candidate.gender else "disagree"
    for name, (a, b) in (("phone", (query.phones, candidate.phones)), ("email", (query.emails, candidate.emails))):
        level = _set_level(a, b)
        if level:
            levels[name] = level
    if query.addresses & candidate.addresses:
        levels["address"] = "exact"
    elif query.postal_codes and candidate.postal_codes:
        levels["address"] = "postalCode" if query.postal_codes & candidate.postal_codes else "disagree"

    total = rules.PRIOR + sum(rules.WEIGHTS[name][level] for name, level in levels.items())
    score = 1.0 / (1.0 + math.pow(2.0, -total))

    if query.identifiers & candidate.identifiers:
        return MatchResult(1.0, "certain", levels, "same-identifier")
    if levels.get("family") == "exact" and levels.get("given") == "exact" and levels.get("birthDate") == "exact" \
            and any(levels.get(name) == "exact" for name in ("phone", "email", "address")):
        return MatchResult(1.0, "certain", levels, "same-name-birthdate-and-contact")
    grade = "probable" if score >= rules.THRESHOLDS["probable"] else \
        "possible" if score >= rules.THRESHOLDS["possible"] else None
    for (name, level), cap in rules.CAPS.items():
        if grade is not None and levels.get(name) == level and _RANK[grade] > _RANK[cap]:
            grade = cap
            above = next(g for g, rank in _RANK.items() if rank == _RANK[cap] + 1)
            score = min(score, rules.THRESHOLDS[above] - 0.01)
    if grade is None:
        return MatchResult(score, "none", levels)
    for system, values in query.current_identifier_systems.items():
        other = candidate.current_identifier_systems.get(system)
        if other and not values & other:
            return MatchResult(0.0, "certainly-not", levels, f"different-identifier:{system}")
    return MatchResult(round(score, 4), grade, levels)
