"""Candidate Patients for $match: indexed blocking queries over the search-index tables, in one statement.

A candidate shares at least one blocking key with the query Patient: an identifier, a phone number (last
nine digits), an email, or a birth date (as given, with day and month swapped, or a year off). Or it has a
family name that sounds alike (double metaphone) together with a given name of one of the query's initials
(nicknames' included; either way round, for swapped names) and a birth date that is near the query's (any of
the above, or one digit off) or unknown. That last condition is what keeps a common surname's block small,
and it loses nothing: by the weights of `match_rules`, a birth date that disagrees keeps a candidate below
`possible` unless it shares an identifier, phone or email, which have blocks of their own (a test checks
this against the configuration). The expressions match the partial indexes of migration 0003.
"""

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from fhir_server.identity import match_rules as rules
from fhir_server.identity.matching import Features, nickname_forms
from fhir_server.search.values import normalize_string


@dataclass(slots=True)
class Candidate:
    pk: int
    fhir_id: str
    content: bytes


def _midnights(dates: set[date]) -> list[datetime]:
    """The dates as the UTC midnights the date index stores."""
    return [datetime(d.year, d.month, d.day, tzinfo=timezone.utc) for d in sorted(dates)]


def _mistyped_birth_dates(birth: date) -> set[date]:
    """The birth date and its likely mistypings: day and month swapped, the year off by one."""
    dates = {birth}
    if birth.day <= 12 and birth.day != birth.month:
        dates.add(birth.replace(month=birth.day, day=birth.month))
    for year in (birth.year - 1, birth.year + 1):
        try:
            dates.add(birth.replace(year=year))
        except ValueError:  # 29 February
            pass
    return dates


def _near_birth_dates(birth: date) -> set[date]:
    """The mistypings, and every real date written with one digit (of YYYYMMDD) different."""
    dates = _mistyped_birth_dates(birth)
    digits = birth.strftime("%Y%m%d")
    for position, original in enumerate(digits):
        for digit in "0123456789".replace(original, ""):
            typed = digits[:position] + digit + digits[position + 1:]
            try:
                dates.add(date(int(typed[:4]), int(typed[4:6]), int(typed[6:])))
            except ValueError:
                pass
    return dates


def _name_block(query: Features, raw_names: tuple[list[str], list[str]]) -> tuple[str, list[Any]] | None:
    """Alike family names, then (each checked per candidate, so the plan never reads a whole index) a birth
    date near the query's or none, and a given name of one of the query's initials. When the block is cut at
    BLOCK_LIMIT (a common name without a birth date), the same family, then the same given name, come first."""
    families, givens = raw_names
    if not families or not (givens or query.birth_date):
        return None
    # Family sounds like the query's family (or, swapped, its given name). Joined to the names, the sounds
    # are index keys even though dmetaphone() of them is computed in SQL; OFFSET 0 keeps the planner from
    # folding the subquery into the ORDER BY, which made it read every family name of the index in order.
    sounds = sorted({normalize_string(name) for name in families + givens[:1]})
    sql = ("SELECT n.resource_id FROM (SELECT DISTINCT f.resource_id, f.value FROM unnest(%s::text[]) AS q(name) "
           "JOIN search_string f ON dmetaphone(f.value) = dmetaphone(q.name) "
           "AND f.resource_type = 'Patient' AND f.param = 'family' OFFSET 0) n")
    args: list[Any] = [sounds]
    if query.birth_date:
        # A full birth date that is not near; a partial one compares as unknown, as in matching.
        sql += (" LEFT JOIN LATERAL (SELECT 1 FROM search_date d WHERE d.resource_id = n.resource_id "
                "AND d.resource_type = 'Patient' AND d.param = 'birthdate' AND d.high < d.low + interval '1 day' "
                "AND d.low <> ALL(%s) LIMIT 1) far ON true")
        args.append(_midnights(_near_birth_dates(query.birth_date)))
    order = "n.value = ANY(%s) DESC"
    order_args: list[Any] = [sorted({normalize_string(name) for name in families})]
    if givens:
        # Given name with an initial of the query's given names, their nicknames, or (swapped) family names;
        # the same given name first.
        initials = sorted({normalize_string(name)[:1] for name in givens + families}
                          | {form[0] for given in query.givens for form in nickname_forms(given)})
        sql += (" CROSS JOIN LATERAL (SELECT g.value = ANY(%s) AS same FROM search_string g "
                "WHERE g.resource_id = n.resource_id AND g.resource_type = 'Patient' AND g.param = 'given' "
                "AND left(g.value, 1) = ANY(%s) ORDER BY 1 DESC LIMIT 1) g")
        args += [sorted({normalize_string(name) for name in givens}), initials]
        order += ", g.same DESC"
    if query.birth_date:
        sql += " WHERE far IS NULL"
    return f"{sql} ORDER BY {order} LIMIT %s", [*args, *order_args, rules.BLOCK_LIMIT]


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
        args += [_midnights(_mistyped_birth_dates(query.birth_date)), limit]
    names = _name_block(query, raw_names)
    if names:
        blocks.append(names[0])
        args += names[1]
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
