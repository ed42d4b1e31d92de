"""_include and _revinclude: targets, `*`, typed targets, :iterate, de-duplication, the cap, and totals."""

import pytest

from fhir_server.errors import FHIRError
from fhir_server.search import include
from tests.search.helpers import match_ids, run


def included_ids(found):
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in found.get("entry", [])
                  if e["search"]["mode"] == "include")


def outcomes(found):
    return [issue for e in found.get("entry", []) if e["search"]["mode"] == "outcome"
            for issue in e["resource"]["issue"]]


def observation(fhir_id, subject, **fields):
    return {"resourceType": "Observation", "id": fhir_id, "status": "final", "code": {"text": "x"},
            "subject": {"reference": subject}, **fields}


@pytest.fixture
def clinic(store):
    store({"resourceType": "Organization", "id": "org", "name": "Clinic", "partOf": {"reference": "Organization/top"}},
          {"resourceType": "Organization", "id": "top", "name": "Holding"},
          {"resourceType": "Practitioner", "id": "doc"},
          {"resourceType": "Patient", "id": "ann", "managingOrganization": {"reference": "Organization/org"}},
          {"resourceType": "Patient", "id": "bob",
           "link": [{"other": {"reference": "Patient/ann"}, "type": "seealso"}]},
          {"resourceType": "Group", "id": "grp", "type": "person", "actual": True},
          observation("o1", "Patient/ann", performer=[{"reference": "Practitioner/doc"}]),
          observation("o2", "Patient/ann"),
          observation("o3", "Patient/bob"),
          observation("o4", "Group/grp"),
          observation("o5", "Patient/missing"))


async def test_include_targets_once_and_not_counted(aconn, clinic):
    found = await run(aconn, "Observation", "_include=Observation:subject&_sort=_id")
    assert match_ids(found) == ["o1", "o2", "o3", "o4", "o5"]
    assert included_ids(found) == ["Group/grp", "Patient/ann", "Patient/bob"]  # ann once, the missing one skipped
    assert found["total"] == 5
    paged = await run(aconn, "Observation", "_include=Observation:subject&_sort=_id&_count=2&_total=accurate")
    assert paged["total"] == 5 and included_ids(paged) == ["Patient/ann"]
    entry = next(e for e in paged["entry"] if e["search"]["mode"] == "include")
    assert entry["fullUrl"].endswith("/Patient/ann")


async def test_include_typed_target_and_wildcard(aconn, clinic):
    found = await run(aconn, "Observation", "_include=Observation:subject:Group")
    assert included_ids(found) == ["Group/grp"]
    found = await run(aconn, "Observation", "_id=o1&_include=Observation:*")
    assert included_ids(found) == ["Patient/ann", "Practitioner/doc"]
    found = await run(aconn, "Observation", "_id=o1&_include=Observation:patient&_include=Observation:performer")
    assert included_ids(found) == ["Patient/ann", "Practitioner/doc"]


async def test_revinclude(aconn, clinic):
    found = await run(aconn, "Patient", "_id=ann&_revinclude=Observation:subject")
    assert match_ids(found) == ["ann"]
    assert included_ids(found) == ["Observation/o1", "Observation/o2"]
    found = await run(aconn, "Patient", "_id=ann&_revinclude=*")
    assert included_ids(found) == ["Observation/o1", "Observation/o2", "Patient/bob"]
    found = await run(aconn, "Patient", "_revinclude=Observation:subject&_revinclude=Patient:link&_sort=_id")
    # bob links to ann, but bob is a match already: it appears once, as a match.
    assert match_ids(found) == ["ann", "bob"]
    assert included_ids(found) == ["Observation/o1", "Observation/o2", "Observation/o3"]


async def test_iterate_follows_included_resources(aconn, clinic):
    plain = await run(aconn, "Observation", "_id=o1&_include=Observation:subject&_include=Patient:organization")
    assert included_ids(plain) == ["Patient/ann"]  # without :iterate, Patient:organization applies to matches only
    found = await run(aconn, "Observation", "_id=o1&_include=Observation:subject&_include:iterate=Patient:organization"
                                            "&_include:iterate=Organization:partof")
    assert included_ids(found) == ["Organization/org", "Organization/top", "Patient/ann"]
    found = await run(aconn, "Organization", "_id=top&_revinclude:iterate=Organization:partof"
                                             "&_revinclude:iterate=Patient:organization")
    assert included_ids(found) == ["Organization/org", "Patient/ann"]


async def test_iterate_on_a_reference_cycle_stops(aconn, store):
    store({"resourceType": "Patient", "id": "a", "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}]},
          {"resourceType": "Patient", "id": "b", "link": [{"other": {"reference": "Patient/a"}, "type": "seealso"}]})
    found = await run(aconn, "Patient", "_id=a&_include:iterate=Patient:link")
    assert included_ids(found) == ["Patient/b"] and not outcomes(found)


async def test_iterate_is_bounded_and_says_so(aconn, store):
    chain = [{"resourceType": "Organization", "id": f"c{i}", "partOf": {"reference": f"Organization/c{i + 1}"}}
             for i in range(include.MAX_ROUNDS + 3)]
    store(*chain)
    found = await run(aconn, "Organization", "_id=c0&_include:iterate=Organization:partof")
    assert len(included_ids(found)) == include.MAX_ROUNDS
    assert [issue["code"] for issue in outcomes(found)] == ["incomplete"]


async def test_cap_is_stated_not_silent(aconn, store, monkeypatch):
    monkeypatch.setattr(include, "MAX_INCLUDED", 3)
    store({"resourceType": "Patient", "id": "p"},
          *[observation(f"o{i}", "Patient/p") for i in range(5)])
    found = await run(aconn, "Patient", "_revinclude=Observation:subject")
    assert included_ids(found) == ["Observation/o0", "Observation/o1", "Observation/o2"]
    issues = outcomes(found)
    assert len(issues) == 1 and issues[0]["code"] == "incomplete" and "3" in issues[0]["diagnostics"]
    uncapped = await run(aconn, "Patient", "_revinclude=Observation:subject&_count=1&_revinclude=Observation:focus")
    assert len(included_ids(uncapped)) == 3


async def test_links_keep_include_parameters(aconn, clinic):
    found = await run(aconn, "Observation", "_include=Observation:subject&_include:iterate=Patient:link&_count=2")
    next_link = next(item["url"] for item in found["link"] if item["relation"] == "next")
    assert "_include=Observation:subject" in next_link and "_include:iterate=Patient:link" in next_link


async def test_summary_count_skips_includes(aconn, clinic):
    found = await run(aconn, "Observation", "_include=Observation:subject&_summary=count")
    assert found["total"] == 5 and "entry" not in found


@pytest.mark.parametrize("value", ["Observation", "Observation:nonsense", "Nope:subject", "Observation:code",
                                   "Observation:subject:Nope", "Observation:subject:Medication", ":subject"])
async def test_invalid_includes_are_400(aconn, value):
    with pytest.raises(FHIRError) as error:
        await run(aconn, "Observation", f"_include={value}", strict=False)
    assert error.value.status == 400 and value in error.value.issues[0].diagnostics


async def test_unknown_include_modifier_is_400(aconn):
    with pytest.raises(FHIRError):
        await run(aconn, "Observation", "_include:deep=Observation:subject")
