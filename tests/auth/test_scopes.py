"""SMART scope parsing: v1 and v2 forms, contexts, filters, and what is not a resource scope."""

from fhir_server.auth.scopes import Grant, matching_grants, parse_scopes


def test_v1_scopes() -> None:
    (read,) = parse_scopes(["patient/Observation.read"])
    assert read == Grant("patient", "Observation", frozenset("rs"))
    (write,) = parse_scopes(["user/*.write"])
    assert write.permissions == frozenset("cud") and write.resource_type == "*"
    assert parse_scopes(["system/*.*"])[0].permissions == frozenset("cruds")


def test_v2_scopes_with_filters() -> None:
    (grant,) = parse_scopes(["patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
                             "observation-category|laboratory"])
    assert grant.permissions == frozenset("rs")
    assert grant.filters == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)
    assert parse_scopes(["system/*.cruds"])[0].permissions == frozenset("cruds")


def test_malformed_and_non_resource_scopes_grant_nothing() -> None:
    assert parse_scopes(["openid", "fhirUser", "launch/patient", "offline_access", "patient/Observation.sr",
                         "user/Patient.x", "patient/Observation.", "other/Patient.read"]) == ()


def test_matching_grants() -> None:
    grants = parse_scopes(["patient/Observation.rs", "user/Patient.cud"])
    assert len(matching_grants(grants, "Observation", "s")) == 1
    assert matching_grants(grants, "Observation", "c") == []
    assert len(matching_grants(grants, "Patient", "u")) == 1
