"""Realistic searches on the resource types the server's workflows rely on."""

import pytest

from tests.search.helpers import ids


async def expect(aconn, resource_type: str, cases: list[tuple[str, list[str]]]) -> None:
    """Run every query against one data set (a set-up per query would dominate the test time)."""
    wrong = {query: found for query, expected in cases
             if (found := sorted(await ids(aconn, resource_type, query))) != expected}
    assert not wrong, wrong


@pytest.fixture
def records(store):
    store(
        {"resourceType": "Patient", "id": "pat1", "name": [{"family": "García", "given": ["María", "José"]}],
         "gender": "female", "birthDate": "1984-07-12",
         "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-001"}],
         "telecom": [{"system": "phone", "value": "+1 555 0101", "use": "mobile"},
                     {"system": "email", "value": "maria@example.org"}],
         "address": [{"line": ["12 Elm St"], "city": "Boston", "postalCode": "02115"}]},
        {"resourceType": "Patient", "id": "pat2", "name": [{"family": "Garcia", "given": ["Luis"]}],
         "gender": "male", "birthDate": "1990",
         "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-002"}],
         "telecom": [{"system": "email", "value": "luis@example.org"}],
         "address": [{"postalCode": "02116"}]},
        {"resourceType": "Communication", "id": "com1", "status": "completed",
         "subject": {"reference": "Patient/pat1"}, "sent": "2024-05-01T09:30:00Z",
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                   "code": "reminder"}]}],
         "basedOn": [{"reference": "CommunicationRequest/req1"}], "partOf": [{"reference": "Task/task1"}],
         "recipient": [{"reference": "Patient/pat1"}, {"reference": "Practitioner/doc1"}]},
        {"resourceType": "Communication", "id": "com2", "status": "in-progress",
         "subject": {"reference": "Patient/pat2"}, "sent": "2024-06-15",
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                   "code": "alert"}]}],
         "recipient": [{"reference": "Practitioner/doc1"}]},
        {"resourceType": "CommunicationRequest", "id": "req1", "status": "active", "priority": "urgent",
         "subject": {"reference": "Patient/pat1"}, "occurrenceDateTime": "2024-05-01",
         "recipient": [{"reference": "Patient/pat1"}]},
        {"resourceType": "CommunicationRequest", "id": "req2", "status": "completed", "priority": "routine",
         "occurrencePeriod": {"start": "2024-01-01"}, "recipient": [{"reference": "Practitioner/doc1"}]},
        {"resourceType": "Task", "id": "task1", "status": "requested", "intent": "order",
         "for": {"reference": "Patient/pat1"}, "owner": {"reference": "Practitioner/doc1"},
         "authoredOn": "2024-04-30T08:00:00+02:00",
         "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}},
        {"resourceType": "Task", "id": "task2", "status": "completed", "intent": "order",
         "for": {"reference": "Group/g1"}, "owner": {"reference": "Organization/org1"}, "authoredOn": "2023-12-31"},
        {"resourceType": "DocumentReference", "id": "doc1", "status": "current",
         "subject": {"reference": "Patient/pat1"}, "date": "2024-05-02T10:00:00Z",
         "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9", "display": "Summary of episode"}]},
         "content": [{"attachment": {"contentType": "application/pdf"}}]},
        {"resourceType": "DocumentReference", "id": "doc2", "status": "superseded",
         "subject": {"reference": "Patient/pat2"}, "date": "2023-01-01T00:00:00Z",
         "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
         "content": [{"attachment": {"contentType": "text/plain"}}]},
        {"resourceType": "QuestionnaireResponse", "id": "qr1", "status": "completed",
         "questionnaire": "http://example.org/Questionnaire/phq9", "subject": {"reference": "Patient/pat1"},
         "authored": "2024-05-03T12:00:00Z"},
        {"resourceType": "QuestionnaireResponse", "id": "qr2", "status": "in-progress",
         "questionnaire": "http://example.org/Questionnaire/gad7", "subject": {"reference": "Patient/pat2"},
         "authored": "2024-02-01"},
        {"resourceType": "MeasureReport", "id": "mr1", "status": "complete", "type": "individual",
         "measure": "http://example.org/Measure/bp-control", "subject": {"reference": "Patient/pat1"},
         "period": {"start": "2024-01-01", "end": "2024-03-31"}},
        {"resourceType": "MeasureReport", "id": "mr2", "status": "pending", "type": "summary",
         "measure": "http://example.org/Measure/a1c", "period": {"start": "2023-01-01", "end": "2023-12-31"}},
    )


async def test_patient(aconn, records):
    await expect(aconn, "Patient", [
        ("name=maria", ["pat1"]),
        ("name=garcia", ["pat1", "pat2"]),
        ("family=garcía&given=luis", ["pat2"]),
        ("given=jose", ["pat1"]),
        ("birthdate=ge1985", ["pat2"]),
        ("birthdate=1984-07", ["pat1"]),
        ("gender=female", ["pat1"]),
        ("identifier=http://hospital.example.org/mrn|MRN-002", ["pat2"]),
        ("telecom=phone|%2B1 555 0101", ["pat1"]),
        ("phone=%2B1%20555%200101", ["pat1"]),
        ("email=luis@example.org", ["pat2"]),
        ("email=maria@example.org,luis@example.org", ["pat1", "pat2"]),
        ("address-postalcode=0211", ["pat1", "pat2"]),
        ("address-postalcode=02115", ["pat1"]),
        ("address=boston", ["pat1"]),
    ])


async def test_communication(aconn, records):
    await expect(aconn, "Communication", [
        ("subject=Patient/pat1", ["com1"]),
        ("patient=pat2", ["com2"]),
        ("sent=ge2024-06", ["com2"]),
        ("sent=2024-05-01", ["com1"]),
        ("status=completed", ["com1"]),
        ("status:not=completed", ["com2"]),
        ("category=http://terminology.hl7.org/CodeSystem/communication-category|alert", ["com2"]),
        ("based-on=CommunicationRequest/req1", ["com1"]),
        ("part-of=Task/task1", ["com1"]),
        ("recipient=Practitioner/doc1", ["com1", "com2"]),
        ("recipient=Practitioner/doc1&recipient=Patient/pat1", ["com1"]),
        ("recipient:Patient=pat1", ["com1"]),
    ])


async def test_communication_request(aconn, records):
    await expect(aconn, "CommunicationRequest", [
        ("status=active", ["req1"]),
        ("occurrence=2024-05-01", ["req1"]),
        ("occurrence=lt2024-06", ["req1"]),
        ("recipient=Practitioner/doc1", ["req2"]),
        ("priority=urgent,stat", ["req1"]),
    ])


async def test_task(aconn, records):
    await expect(aconn, "Task", [
        ("status=requested,received,accepted", ["task1"]),
        ("owner=Practitioner/doc1", ["task1"]),
        ("patient=Patient/pat1", ["task1"]),
        ("patient:missing=true", ["task2"]),
        ("authored-on=2024-04-30", ["task1"]),
        ("authored-on=lt2024", ["task2"]),
        ("code=http://hl7.org/fhir/CodeSystem/task-code|fulfill", ["task1"]),
    ])


async def test_document_reference(aconn, records):
    await expect(aconn, "DocumentReference", [
        ("patient=pat1", ["doc1"]),
        ("type=http://loinc.org|34133-9", ["doc1"]),
        ("type:text=summary", ["doc1"]),
        ("date=ge2024", ["doc1"]),
        ("status=current&patient=Patient/pat1", ["doc1"]),
        ("contenttype=text/plain", ["doc2"]),
    ])


async def test_questionnaire_response(aconn, records):
    await expect(aconn, "QuestionnaireResponse", [
        ("subject=Patient/pat1", ["qr1"]),
        ("questionnaire=http://example.org/Questionnaire/gad7", ["qr2"]),
        ("authored=gt2024-03", ["qr1"]),
        ("status=completed", ["qr1"]),
    ])


async def test_measure_report(aconn, records):
    await expect(aconn, "MeasureReport", [
        ("measure=http://example.org/Measure/bp-control", ["mr1"]),
        ("period=2024-02-15", []),  # the period is wider than the day: it does not equal it
        ("period=ge2024-02-15", ["mr1"]),
        ("period=2024", ["mr1"]),
        ("period=lt2024", ["mr2"]),
        ("status=complete", ["mr1"]),
        ("subject=Patient/pat1", ["mr1"]),
        ("subject:missing=true", ["mr2"]),
    ])


async def test_sort_communications_by_sent_descending(aconn, records):
    assert await ids(aconn, "Communication", "_sort=-sent") == ["com2", "com1"]
