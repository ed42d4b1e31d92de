"""_summary, _elements, _count caps and _contained: what each entry carries, and what the Bundle says."""

import pytest

from fhir_server.errors import FHIRError
from tests.search.helpers import run


def subsetted(resource):
    return any(tag.get("code") == "SUBSETTED" for tag in resource.get("meta", {}).get("tag", []))


def resources(found, mode="match"):
    return [e["resource"] for e in found.get("entry", []) if e["search"]["mode"] == mode]


@pytest.fixture
def records(store):
    store({"resourceType": "Patient", "id": "ann", "text": {"status": "generated", "div": "<div>Ann</div>"},
           "name": [{"family": "Smith"}], "gender": "female", "maritalStatus": {"text": "married"},
           "deceasedBoolean": False, "_gender": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
           "contact": [{"name": {"family": "Smith"}}], "photo": [{"title": "me"}],
           "link": [{"other": {"reference": "Patient/bob"}, "type": "seealso",
                     "extension": [{"url": "http://example.org/x", "valueString": "y"}]}],
           "meta": {"tag": [{"system": "http://example.org/tags", "code": "vip"}]}},
          {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "bp"},
           "subject": {"reference": "Patient/ann"}, "note": [{"text": "noted"}], "valueString": "high",
           "interpretation": [{"text": "H"}],
           "component": [{"code": {"text": "sys"}, "valueQuantity": {"value": 120},
                          "interpretation": [{"text": "H"}]}]})


async def test_summary_true_keeps_summary_elements_nested(aconn, records):
    patient = resources(await run(aconn, "Patient", "_summary=true"))[0]
    assert set(patient) == {"resourceType", "id", "meta", "name", "gender", "_gender", "deceasedBoolean", "link"}
    assert patient["link"] == [{"other": {"reference": "Patient/bob"}, "type": "seealso"}]
    assert subsetted(patient) and {"system": "http://example.org/tags", "code": "vip"} in patient["meta"]["tag"]
    observation = resources(await run(aconn, "Observation", "_summary=true"))[0]
    assert set(observation) == {"resourceType", "id", "meta", "status", "code", "subject", "valueString",
                                "component"}
    assert observation["component"] == [{"code": {"text": "sys"}, "valueQuantity": {"value": 120}}]


async def test_summary_text_data_false(aconn, records):
    text = resources(await run(aconn, "Observation", "_summary=text"))[0]
    assert set(text) == {"resourceType", "id", "meta", "status", "code"}  # no text here; mandatory kept
    patient = resources(await run(aconn, "Patient", "_summary=text"))[0]
    assert set(patient) == {"resourceType", "id", "meta", "text"} and subsetted(patient)
    data = resources(await run(aconn, "Patient", "_summary=data"))[0]
    assert "text" not in data and "photo" in data and subsetted(data)
    full = resources(await run(aconn, "Patient", "_summary=false"))[0]
    assert "text" in full and not subsetted(full)


async def test_elements_keep_mandatory_and_apply_to_matches(aconn, records):
    found = await run(aconn, "Observation", "_elements=subject&_include=Observation:subject")
    observation = resources(found)[0]
    assert set(observation) == {"resourceType", "id", "meta", "subject", "status", "code"} and subsetted(observation)
    patient = resources(found, "include")[0]
    assert "photo" in patient and not subsetted(patient)  # unqualified names shape the matches only
    found = await run(aconn, "Observation", "_elements=subject,Patient.gender&_include=Observation:subject")
    patient = resources(found, "include")[0]
    assert set(patient) == {"resourceType", "id", "meta", "gender", "_gender"} and subsetted(patient)
    found = await run(aconn, "Patient", "_elements=Patient.deceased")
    assert set(resources(found)[0]) == {"resourceType", "id", "meta", "deceasedBoolean"}


async def test_summary_applies_to_included_resources(aconn, records):
    found = await run(aconn, "Observation", "_summary=true&_include=Observation:subject")
    assert "photo" not in resources(found, "include")[0] and subsetted(resources(found, "include")[0])


async def test_elements_with_summary_is_400(aconn):
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_elements=name&_summary=true")


async def test_count_cap_is_stated(aconn, records, monkeypatch):
    from fhir_server.settings import get_settings
    monkeypatch.setattr(get_settings(), "max_page_size", 1)
    found = await run(aconn, "Patient", "_count=50")
    outcome = [e for e in found["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1
    issue = outcome[0]["resource"]["issue"][0]
    assert issue["severity"] == "information" and issue["expression"] == ["_count"] and "1" in issue["diagnostics"]
    assert len(resources(found)) == 1
    assert "outcome" not in str((await run(aconn, "Patient", "_count=1"))["entry"])


async def test_contained(aconn, store):
    store({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
           "contained": [{"resourceType": "Patient", "id": "p1", "name": [{"family": "Inside"}]}],
           "subject": {"reference": "#p1"}})
    found = await run(aconn, "Observation", "_contained=false&_containedType=container")
    observation = resources(found)[0]
    assert observation["contained"][0]["id"] == "p1"  # contained resources travel inside their container
    assert "_contained=false" in found["link"][0]["url"]
    assert not resources(await run(aconn, "Patient", "family=inside"))  # nor are they found on their own
    with pytest.raises(FHIRError) as error:
        await run(aconn, None, "_contained=true")  # contained resources are searched within one type
    assert error.value.status == 400
    with pytest.raises(FHIRError):
        await run(aconn, "Patient", "_contained=maybe", strict=False)
