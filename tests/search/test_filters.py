"""Filter semantics, data-driven: (type, query, expected ids) over one shared set of resources."""

import pytest

from fhir_server.errors import FHIRError
from tests.search.helpers import ids, run

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CS = "http://example.org/cs"


def quantity(value, code, unit=None, system=UCUM):
    return {"value": value, "unit": unit or code, "system": system, "code": code}


def concept(system, code, text=None):
    found = {"coding": [{"system": system, "code": code}]}
    return {**found, "text": text} if text else found


RESOURCES = [
    {"resourceType": "Organization", "id": "acme", "name": "Acme Health"},
    {"resourceType": "Organization", "id": "beta", "name": "Beta Clinic", "partOf": {"reference": "Organization/acme"}},
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith", "given": ["John"]}], "gender": "male",
     "birthDate": "1970-03-04", "managingOrganization": {"reference": "Organization/acme"},
     "identifier": [{"system": "urn:mrn", "value": "123",
                     "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record"}}],
     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Diabetic patient "
                                            "with <b>hypertension</b></p></div>"}},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Smíth", "given": ["Anna"]}], "gender": "female",
     "birthDate": "1980", "managingOrganization": {"reference": "Organization/beta"},
     "identifier": [{"system": "urn:mrn", "value": "999"}],
     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Healthy runner</div>"}},
    {"resourceType": "Patient", "id": "p3", "name": [{"family": "Jones"}], "address": [{"city": "Zürich"}],
     "meta": {"tag": [{"system": "http://example.org/tags", "code": "vip"}], "profile": ["http://example.org/sd/p"],
              "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
              "source": "http://example.org/source#abc"}},
    {"resourceType": "Device", "id": "d1", "owner": {"reference": "Organization/acme"}},
    {"resourceType": "Observation", "id": "bp1", "status": "final", "subject": {"reference": "Patient/p1"},
     "code": concept(LOINC, "85354-9", "Blood pressure"),
     "component": [{"code": concept(LOINC, "8480-6"), "valueQuantity": quantity(120, "mm[Hg]")},
                   {"code": concept(LOINC, "8462-4"), "valueQuantity": quantity(80, "mm[Hg]")}]},
    {"resourceType": "Observation", "id": "bp2", "status": "final", "subject": {"reference": "Patient/p2"},
     "code": concept(LOINC, "85354-9"),
     "component": [{"code": concept(LOINC, "8480-6"), "valueQuantity": quantity(80, "mm[Hg]")},
                   {"code": concept(LOINC, "8462-4"), "valueQuantity": quantity(120, "mm[Hg]")}]},
    {"resourceType": "Observation", "id": "sys1", "status": "final", "subject": {"reference": "Patient/p1"},
     "code": concept(LOINC, "8480-6"), "valueQuantity": quantity(130, "mm[Hg]"),
     "effectiveDateTime": "2024-05-01T23:30:00-02:00"},
    {"resourceType": "Observation", "id": "glu", "status": "amended", "subject": {"reference": "Patient/p2"},
     "code": concept(LOINC, "1234-5"), "valueQuantity": quantity(5000, "mg"),
     "effectiveDateTime": "2024-05-02T01:00:00Z"},
    {"resourceType": "Observation", "id": "len", "status": "final", "code": concept(LOINC, "8302-2"),
     "valueQuantity": quantity(1.80, "m"), "subject": {"reference": "Device/d1"}},
    {"resourceType": "Observation", "id": "byid", "status": "final", "code": concept(LOINC, "8302-2"),
     "subject": {"identifier": {"system": "urn:mrn", "value": "123"}}},
    {"resourceType": "Observation", "id": "cs1", "status": "final", "code": concept(CS, "A11"),
     "valueCodeableConcept": concept(CS, "B")},
    {"resourceType": "Observation", "id": "cs2", "status": "final", "code": concept(CS, "B")},
    {"resourceType": "Communication", "id": "c1", "status": "completed", "subject": {"reference": "Patient/p1"}},
    {"resourceType": "Communication", "id": "c2", "status": "completed", "subject": {"reference": "Patient/p2"}},
    {"resourceType": "AuditEvent", "id": "ae1", "type": {"code": "rest"}, "recorded": "2024-01-01T00:00:00Z",
     "agent": [{"who": {"reference": "Practitioner/doc"}, "requestor": True}], "source": {"observer": {}},
     "entity": [{"what": {"reference": "Observation/sys1"}}]},
    {"resourceType": "List", "id": "l1", "status": "current", "mode": "working",
     "entry": [{"item": {"reference": "Patient/p1"}}, {"item": {"reference": "Patient/p3"}},
               {"item": {"reference": "Observation/glu"}}]},
    {"resourceType": "CodeSystem", "id": "cs", "url": CS, "status": "active", "content": "complete",
     "concept": [{"code": "A", "concept": [{"code": "A1", "concept": [{"code": "A11"}]}]}, {"code": "B"}]},
    {"resourceType": "ValueSet", "id": "vs-a", "url": "http://example.org/vs-a", "status": "active",
     "compose": {"include": [{"system": CS, "filter": [{"property": "concept", "op": "is-a", "value": "A1"}]}]}},
    {"resourceType": "ValueSet", "id": "vs-bp", "url": "http://example.org/vs-bp", "status": "active",
     "compose": {"include": [{"system": LOINC, "concept": [{"code": "8480-6"}, {"code": "8462-4"}]}]}},
    {"resourceType": "ValueSet", "id": "vs-cs", "url": "http://example.org/vs-cs", "status": "active",
     "compose": {"include": [{"system": CS}]}},
]

CASES = [
    # chaining, with and without the target type, to depth two
    ("Communication", "subject:Patient.name=smith", ["c1", "c2"]),
    ("Communication", "subject:Patient.name:exact=Smith", ["c1"]),
    ("Communication", "subject.family=jones", []),
    ("Observation", "subject.identifier=urn:mrn|999", ["bp2", "glu"]),
    ("Observation", "subject:Patient.organization.name=acme", ["bp1", "sys1"]),
    ("Observation", "subject.organization.name=acme", ["bp1", "len", "sys1"]),  # Patient and Device subjects
    ("Observation", "subject:Device.organization.name=acme", ["len"]),
    ("Observation", "subject.organization.partof.name=acme", ["bp2", "glu"]),
    ("Observation", "subject:Patient.gender=female,male&code=8480-6", ["sys1"]),
    ("Observation", "subject:Patient.birthdate=1970", ["bp1", "sys1"]),
    # reverse chaining, nested
    ("Patient", "_has:Observation:patient:code=1234-5", ["p2"]),
    ("Patient", "_has:Observation:subject:code=8480-6,1234-5", ["p1", "p2"]),
    ("Patient", "_has:Observation:subject:_has:AuditEvent:entity:agent=Practitioner/doc", ["p1"]),
    ("Organization", "_has:Patient:organization:_has:Observation:subject:status=amended", ["beta"]),
    ("Patient", "_has:Communication:subject:status=completed&gender=male", ["p1"]),
    # composites: the pair matches within one element only
    ("Observation", "component-code-value-quantity=http://loinc.org|8480-6$gt100", ["bp1"]),
    ("Observation", "component-code-value-quantity=8480-6$lt100", ["bp2"]),
    ("Observation", "component-code-value-quantity=8480-6$lt100,8462-4$lt100", ["bp1", "bp2"]),
    ("Observation", "code-value-quantity=http://loinc.org|8480-6$gt100", ["sys1"]),
    ("Observation", "code-value-quantity=8480-6$130|http://unitsofmeasure.org|mm[Hg]", ["sys1"]),
    ("Observation", "combo-code-value-quantity=8480-6$ge120", ["bp1", "sys1"]),
    ("Observation", "code-value-concept=A11$B", ["cs1"]),
    ("Observation", "code-value-quantity:missing=false", ["glu", "len", "sys1"]),
    # numbers and quantities: precision ranges and UCUM canonical units
    ("Observation", "value-quantity=5|http://unitsofmeasure.org|g", ["glu"]),
    ("Observation", "value-quantity=5e6|http://unitsofmeasure.org|ug", ["glu"]),  # [4.5, 5.5) g
    ("Observation", "value-quantity=5000000|http://unitsofmeasure.org|ug", []),  # finer than the stored 5000 mg
    ("Observation", "value-quantity=gt4.9|http://unitsofmeasure.org|g", ["glu"]),
    ("Observation", "value-quantity=lt4.9|http://unitsofmeasure.org|g", []),
    # JSON 1.80 reaches the server as the float 1.8: stored range [1.75, 1.85) m
    ("Observation", "value-quantity=180|http://unitsofmeasure.org|cm", []),
    ("Observation", "value-quantity=2|http://unitsofmeasure.org|m", ["len"]),
    ("Observation", "value-quantity=gt179|http://unitsofmeasure.org|cm", ["len"]),
    ("Observation", "value-quantity=1.8|http://unitsofmeasure.org|m", ["len"]),
        ("Observation", "value-quantity=1.80|http://unitsofmeasure.org|m", []),  # [1.75, 1.85) is not within [1.795, 1.805)
    ("Observation", "value-quantity=5000||mg", ["glu"]),
    ("Observation", "value-quantity=ne5000", ["len", "sys1"]),
    ("Observation", "value-quantity=sa129", ["glu", "sys1"]),
    ("Observation", "value-quantity=eb2", []),  # [1.75, 1.85) does not end before [1.5, 2.5)
    ("Observation", "value-quantity=eb3", ["len"]),
    ("Observation", "value-quantity=ap125", ["sys1"]),
    # dates: time zones and precision
    ("Observation", "date=2024-05-02", ["glu", "sys1"]),  # 23:30-02:00 is 01:30Z on the 2nd
    ("Observation", "date=2024-05-01", []),
    ("Observation", "date=lt2024-05-02T01:15:00Z", ["glu"]),
    ("Observation", "date=ge2024-05-02T01:15:00Z", ["sys1"]),
    ("Observation", "date:missing=true&code=8302-2", ["byid", "len"]),
    # tokens: :in, :not-in, :below, :above, :of-type, :text, :not
    ("Observation", "code:in=http://example.org/vs-bp", ["sys1"]),
    ("Observation", "component-code:in=http://example.org/vs-bp", ["bp1", "bp2"]),
    ("Observation", "code:in=http://example.org/vs-a", ["cs1"]),
    ("Observation", "code:in=http://example.org/vs-cs", ["cs1", "cs2"]),
    ("Observation", "code:not-in=http://example.org/vs-cs&status=final&subject:missing=true", ["byid"]),
    ("Observation", "status:in=http://hl7.org/fhir/ValueSet/observation-status&code=1234-5", ["glu"]),
    ("Observation", "status:not-in=http://hl7.org/fhir/ValueSet/observation-status", []),
    ("Observation", "code:below=http://example.org/cs|A", ["cs1"]),
    ("Observation", "code:below=A1", ["cs1"]),
    ("Observation", "code:below=B", ["cs2"]),
    ("Observation", "code:above=http://example.org/cs|A11", ["cs1"]),
    ("Observation", "value-concept:above=B", ["cs1"]),
    ("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123", ["p1"]),
    ("Patient", "identifier:of-type=|MR|123", ["p1"]),
    ("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|999", []),
    ("Observation", "code:text=blood", ["bp1"]),
    ("Observation", "code:text=pressure", ["bp1"]),
    ("Patient", "gender:not=male", ["p2", "p3"]),
    # references: :identifier, type modifier, missing
    ("Observation", "subject:identifier=urn:mrn|123", ["byid"]),
    ("Observation", "subject:identifier=123", ["byid"]),
    ("Observation", "subject:Device=d1", ["len"]),
    ("Observation", "subject:missing=true", ["byid", "cs1", "cs2"]),
    # strings and uris
    ("Patient", "name:contains=mit", ["p1", "p2"]),
    ("Patient", "address-city=zurich", ["p3"]),
    ("Patient", "family:exact=Smíth", ["p2"]),
    ("ValueSet", "url:below=http://example.org/vs-", ["vs-a", "vs-bp", "vs-cs"]),
    ("ValueSet", "url:above=http://example.org/vs-bp/extra", ["vs-bp"]),
    # full text
    ("Patient", "_text=hypertension", ["p1"]),
    ("Patient", "_text=diabetic hypertension", ["p1"]),
    ("Patient", "_text=runner,diabetic", ["p1", "p2"]),
    ("Patient", "_text=smith", []),
    ("Patient", "_content=smith", ["p1", "p2"]),
    ("Patient", "_content=zurich", ["p3"]),
    ("Observation", "_content=\"blood pressure\"", ["bp1"]),
    # meta
    ("Patient", "_tag=http://example.org/tags|vip", ["p3"]),
    ("Patient", "_tag:not=vip", ["p1", "p2"]),
    ("Patient", "_profile=http://example.org/sd/p", ["p3"]),
    ("Patient", "_profile:below=http://example.org/sd/", ["p3"]),
    ("Patient", "_security=R", ["p3"]),
    ("Patient", "_source=http://example.org/source#abc", ["p3"]),
    ("Patient", "_source:missing=true", ["p1", "p2"]),
    # _list
    ("Patient", "_list=l1", ["p1", "p3"]),
    ("Observation", "_list=l1", ["glu"]),
]


@pytest.fixture
def dataset(store):
    store(*RESOURCES)


@pytest.mark.parametrize(("resource_type", "query", "expected"), CASES, ids=[f"{t}?{q}" for t, q, _ in CASES])
async def test_filter(aconn, dataset, resource_type, query, expected):
    assert sorted(await ids(aconn, resource_type, query + "&_count=100")) == sorted(expected)


async def test_system_level_list_and_has(aconn, dataset):
    assert sorted(await ids(aconn, None, "_list=l1")) == ["glu", "p1", "p3"]


@pytest.mark.parametrize("query", [
    "subject.nosuch=1", "subject:Patient.nosuch=x", "_has:Observation:subject:nosuch=1", "_text:exact=x",
    "_list=$current-allergies",
])
async def test_unknown_parts_are_reported(aconn, dataset, query):
    with pytest.raises(FHIRError) as raised:
        await run(aconn, "Observation" if not query.startswith("_has") else "Patient", query)
    assert raised.value.status == 400
    found = await run(aconn, "Observation" if not query.startswith("_has") else "Patient", query, strict=False)
    assert found["entry"][0]["resource"]["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("resource_type", "query"), [
    ("Patient", "_has:Observation:code=1"),
    ("Patient", "_has:NoSuchType:subject:code=1"),
    ("Patient", "_has:Observation:code:code=1"),
    ("Observation", "component-code-value-quantity=8480-6"),
    ("Patient", "identifier:of-type=MR|123"),
])
async def test_malformed_values_are_400(aconn, dataset, resource_type, query):
    with pytest.raises(FHIRError) as raised:
        await run(aconn, resource_type, query, strict=False)
    assert raised.value.status == 400
