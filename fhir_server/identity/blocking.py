"""Candidate Patients for $match: a few indexed blocking queries over the search-index tables, never a scan.

A candidate shares at least one blocking key with the query Patient: an identifier, a phone number (last
nine digits), an email, a birth date (as given, with day and month swapped, or a year off), or a family
name that sounds alike (double metaphone) together with a given name of the same initial (either way
round, for swapped names). The expressions match the partial indexes of migration 0003.
"""

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from fhir_server.identity import match_rules as rules
from fhir_server.identity.matching import Features
from fhir_server.search.values import normalize_string


@dataclass(slots=True)
class Candidate:
    pk: int
    fhir_id: str
    content: bytes


def _birth_dates(birth: date) -> list[datetime]:
    """The birth date and its likely mistypings, as the UTC midnights the date index stores."""
    dates = {birth}
    if birth.day <= 12 and birth.day != birth.month:
        dates.add(birth.replace(month=birth.day, day=birth.month))
    for year in (birth.year - 1, birth.year + 1):
        try:
            dates.add(birth.replace(year=year))
        except ValueError:  # 29 February
            pass
    return [datetime(d.year, d.month, d.day, tzinfo=timezone.utc) for d in sorted(dates)]


def _blocks(query: Features, raw_names: tuple[list[str], list[str]]) -> tuple[list[str], list[Any]]:
    """The blocking subqueries (each yields resource ids, at most BLOCK_LIMIT) and their arguments."""
    blocks: list[str] = []
    args: list[Any] = []
    limit = rules.BLOCK_LIMIT
    if query.identifiers:
        systems, values = zip(*sorted(query.identifiers))
        blocks.append("SELECT t.resource_id FROM search_token t JOIN unnest(%s::text[], %s::text[]) AS q(system, code) "
                      "ON t.code = q.code AND t.system IS NOT DISTINCT FROM nullif(q.system, '') "
                      "WHERE t.resource_type = 'Patient' AND t.param = 'identifier' LIMIT %s")
        args += [list(systems), list(values), limit]
    phones = sorted({digits[-9:] for digits in ("".join(ch for ch in phone if ch.isdigit()) for phone in query.phones)
                     if len(digits) >= 7})
    if phones:
        blocks.append("SELECT resource_id FROM search_token WHERE resource_type = 'Patient' AND param = 'phone' "
                      "AND right(regexp_replace(code, '[^0-9]', '', 'g'), 9) = ANY(%s) LIMIT %s")
        args += [phones, limit]
    if query.emails:
        blocks.append("SELECT resource_id FROM search_token WHERE resource_type = 'Patient' AND param = 'email' "
                      "AND lower(code) = ANY(%s) LIMIT %s")
        args += [sorted(query.emails), limit]
    if query.birth_date:
        blocks.append("SELECT resource_id FROM search_date WHERE resource_type = 'Patient' AND param = 'birthdate' "
                      "AND low = ANY(%s) LIMIT %s")
        args += [_birth_dates(query.birth_date), limit]
    families, givens = raw_names
    if families and givens:
        # Family sounds like the query's family (or, swapped, its given name), given name has an initial of
        # the query's given (or family) names.
        sounds = sorted({normalize_string(name) for name in families + givens[:1]})
        initials = sorted({normalize_string(name)[:1] for name in givens + families if name})
        blocks.append("SELECT f.resource_id FROM search_string f WHERE f.resource_type = 'Patient' "
                      "AND f.param = 'family' AND dmetaphone(f.value) = ANY(ARRAY(SELECT dmetaphone(x) "
                      "FROM unnest(%s::text[]) AS x)) AND EXISTS (SELECT 1 FROM search_string g "
                      "WHERE g.resource_id = f.resource_id AND g.resource_type = 'Patient' AND g.param = 'given' "
                      "AND left(g.value, 1) = ANY(%s)) LIMIT %s")
        args += [sounds, initials, limit]
    return blocks, args


def raw_names(patient: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Family and first given names as written (the index normalizes them its own way)."""
    families, givens = [], []
    for name in patient.get("name") or []:
        if isinstance(name, dict):
            if isinstance(name.get("family"), str) and name["family"].strip():
                families.append(name["family"])
            givens += [given for given in (name.get("given") or [])[:1] if isinstance(given, str) and given.strip()]
    return families, givens


async def candidates(conn: AsyncConnection, patient: dict[str, Any], query: Features, *,
                     exclude_id: str | None, limit: int) -> list[Candidate]:
    """Current, not merged-away Patients sharing a blocking key with `patient` (at most `limit`)."""
    blocks, args = _blocks(query, raw_names(patient))
    if not blocks:
        return []
    union = " UNION ".join(f"({block})" for block in blocks)
    rows = await (await conn.execute(
        f"SELECT r.id, r.fhir_id, r.content FROM resource r WHERE r.id IN ({union}) "
        "AND r.resource_type = 'Patient' AND NOT r.deleted AND r.fhir_id IS DISTINCT FROM %s "
        "AND NOT EXISTS (SELECT 1 FROM patient_replaced p WHERE p.source = r.id) LIMIT %s",
        [*args, exclude_id, limit])).fetchall()
    return [Candidate(row[0], row[1], row[2]) for row in rows]
