from datetime import datetime, timezone
from decimal import Decimal

import pytest

from fhir_server.search.values import (
    FAR_FUTURE, date_range, normalize_string, number_range, reference_target, ucum_canonical,
)

UTC = timezone.utc


@pytest.mark.parametrize(("text", "low", "high"), [
    ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-12", datetime(2024, 12, 1, tzinfo=UTC), datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-03-04", datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 4, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-03-04T10:20", datetime(2024, 3, 4, 10, 20, tzinfo=UTC),
     datetime(2024, 3, 4, 10, 20, 59, 999999, tzinfo=UTC)),
    ("2024-03-04T10:20:30Z", datetime(2024, 3, 4, 10, 20, 30, tzinfo=UTC),
     datetime(2024, 3, 4, 10, 20, 30, 999999, tzinfo=UTC)),
    ("2024-03-04T10:20:30.5+02:00", datetime(2024, 3, 4, 8, 20, 30, 500000, tzinfo=UTC),
     datetime(2024, 3, 4, 8, 20, 30, 599999, tzinfo=UTC)),
    ("2024-03-04T10:20:30.123456Z", datetime(2024, 3, 4, 10, 20, 30, 123456, tzinfo=UTC),
     datetime(2024, 3, 4, 10, 20, 30, 123456, tzinfo=UTC)),
    ("9999", datetime(9999, 1, 1, tzinfo=UTC), FAR_FUTURE),
])
def test_date_range_covers_the_implicit_precision(text, low, high):
    assert date_range(text) == (low, high)


@pytest.mark.parametrize("text", ["", "24", "2024-13", "2024-02-30", "2024/01/01", ">2000", "2024-01-01T25:00"])
def test_date_range_rejects_malformed_dates(text):
    with pytest.raises(ValueError):
        date_range(text)


def test_number_range_follows_significant_digits():
    assert number_range(Decimal("100")) == (Decimal("99.5"), Decimal("100.5"))
    assert number_range(Decimal("1.50")) == (Decimal("1.495"), Decimal("1.505"))
    assert number_range(Decimal("1e2")) == (Decimal("50"), Decimal("150"))


def test_normalize_string_folds_case_and_accents():
    assert normalize_string("Müller-Łódź ÉCOLE") == "muller-łodz ecole"
    assert normalize_string("Smith") == "smith"


@pytest.mark.parametrize(("reference", "expected"), [
    ("Patient/123", ("Patient", "123", None)),
    ("Patient/123/_history/2", ("Patient", "123", None)),
    ("http://other.org/fhir/Patient/9", ("Patient", "9", "http://other.org/fhir/Patient/9")),
    ("urn:uuid:5f1c3c3e-7c3a-4b1e-9a57-3b1c6a1e2f00", (None, None, "urn:uuid:5f1c3c3e-7c3a-4b1e-9a57-3b1c6a1e2f00")),
    ("http://hl7.org/fhir/Questionnaire/q|1.0", (None, None, "http://hl7.org/fhir/Questionnaire/q|1.0")),
    ("#contained", None),
    ("", None),
])
def test_reference_target(reference, expected):
    target = reference_target(reference)
    assert (tuple(target) if target else None) == expected


def test_ucum_canonical_units():
    assert ucum_canonical("mg") == (Decimal("0.001"), "g")
    assert ucum_canonical("kg") == (Decimal(1000), "g")
    assert ucum_canonical("mm") == (Decimal("0.001"), "m")
    assert ucum_canonical("mmol/L") == (Decimal("0.001"), "mol/L")
    assert ucum_canonical("mg/dL") == (Decimal("0.01"), "g/L")
    assert ucum_canonical("h") == (Decimal(3600), "s")
    assert ucum_canonical("min") == (Decimal(60), "s")
    assert ucum_canonical("[lb_av]") == (Decimal("453.59237"), "g")
    assert ucum_canonical("Cel") is None
    assert ucum_canonical("mm[Hg]") is None
    assert ucum_canonical("{beats}/min") is None
    assert ucum_canonical("mg/kg/d") is None
