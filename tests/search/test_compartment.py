"""Compartment search through HTTP: `Patient/id/Type`, `Patient/id/*`, with filters, paging, _include and _sort."""

import httpx
import pytest

from fhir_server.search.compartment import compartments


def create(client: httpx.Client, resource: dict) -> str:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def ref(resource_type: str, fhir_id: str) -> dict:
    return {"reference": f"{resource_type}/{fhir_id}"}


def matches(bundle: dict) -> list[str]:
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
                  if e["search"]["mode"] == "match")


def links(bundle: dict) -> dict[str, str]:
    return {item["relation"]: item["url"] for item in bundle["link"]}


@pytest.fixture
def chart(client: httpx.Client) -> dict[str, str]:
    """A patient with resources in their compartment through each listed parameter, and another patient's."""
    ids = {"patient": create(client, {"resourceType": "Patient", "name": [{"family": "Inside"}]}),
           "other": create(client, {"resourceType": "Patient", "name": [{"family": "Outside"}]}),
           "doc": create(client, {"resourceType": "Practitioner", "name": [{"family": "Doc"}]})}
    me, other, doc = ref("Patient", ids["patient"]), ref("Patient", ids["other"]), ref("Practitioner", ids["doc"])
    resources = {
        "c_subject": {"resourceType": "Communication", "status": "completed", "subject": me, "sender": doc},
        "c_sender": {"resourceType": "Communication", "status": "in-progress", "sender": me, "recipient": [doc]},
        "c_recipient": {"resourceType": "Communication", "status": "completed", "recipient": [other, me]},
        "c_other": {"resourceType": "Communication", "status": "completed", "subject": other},
        "t_for": {"resourceType": "Task", "status": "ready", "intent": "order", "for": me},
        "t_focus": {"resourceType": "Task", "status": "ready", "intent": "order", "focus": me, "for": other},
        "t_other": {"resourceType": "Task", "status": "ready", "intent": "order", "owner": doc},
        "d_subject": {"resourceType": "DocumentReference", "status": "current", "subject": me,
                      "content": [{"attachment": {"url": "http://example.org/a"}}]},
        "d_author": {"resourceType": "DocumentReference", "status": "current", "author": [me],
                     "content": [{"attachment": {"url": "http://example.org/b"}}]},
        "q_subject": {"resourceType": "QuestionnaireResponse", "status": "completed", "subject": me},
        "q_author": {"resourceType": "QuestionnaireResponse", "status": "completed", "author": me, "subject": other},
        "m_subject": {"resourceType": "MeasureReport", "status": "complete", "type": "individual",
                      "measure": "http://example.org/Measure/m", "subject": me,
                      "period": {"start": "2024-01-01", "end": "2024-12-31"}},
        "m_other": {"resourceType": "MeasureReport", "status": "complete", "type": "individual",
                    "measure": "http://example.org/Measure/m", "subject": other,
                    "period": {"start": "2024-01-01", "end": "2024-12-31"}},
    }
    for key, resource in resources.items():
        ids[key] = create(client, resource)
    return ids


@pytest.mark.parametrize(("resource_type", "members"), [
    ("Communication", ["c_subject", "c_sender", "c_recipient"]),
    ("Task", ["t_for", "t_focus"]),
    ("DocumentReference", ["d_subject", "d_author"]),
    ("QuestionnaireResponse", ["q_subject", "q_author"]),
    ("MeasureReport", ["m_subject"]),
])
def test_patient_compartment_by_type(client, chart, resource_type, members):
    response = client.get(f"/Patient/{chart['patient']}/{resource_type}")
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert matches(bundle) == sorted(f"{resource_type}/{chart[key]}" for key in members)
    assert bundle["total"] == len(members)
    assert links(bundle)["self"] == f"{base(client)}/Patient/{chart['patient']}/{resource_type}"


def test_patient_compartment_everything_pages(client, chart):
    expected = sorted(f"{key_type}/{chart[key]}" for key, key_type in [
        ("c_subject", "Communication"), ("c_sender", "Communication"), ("c_recipient", "Communication"),
        ("t_for", "Task"), ("t_focus", "Task"), ("d_subject", "DocumentReference"),
        ("d_author", "DocumentReference"), ("q_subject", "QuestionnaireResponse"),
        ("q_author", "QuestionnaireResponse"), ("m_subject", "MeasureReport")])
    bundle = client.get(f"/Patient/{chart['patient']}/*", params={"_total": "accurate"}).json()
    assert matches(bundle) == expected and bundle["total"] == len(expected)
    seen: list[str] = []
    url = f"/Patient/{chart['patient']}/*?_count=3&_sort=-_lastUpdated"
    while url:
        bundle = client.get(url).json()
        seen += matches(bundle)
        url = links(bundle).get("next")
        assert url is None or url.startswith(f"{base(client)}/Patient/{chart['patient']}/*?")
    assert sorted(seen) == expected and len(seen) == len(set(seen))


def test_compartment_with_filters_include_sort_and_post(client, chart):
    patient = chart["patient"]
    completed = client.get(f"/Patient/{patient}/Communication", params={"status": "completed"}).json()
    assert matches(completed) == sorted(f"Communication/{chart[k]}" for k in ("c_subject", "c_recipient"))
    with_sender = client.get(f"/Patient/{patient}/Communication",
                             params={"_include": "Communication:sender", "_id": chart["c_subject"]}).json()
    assert [e["resource"]["id"] for e in with_sender["entry"] if e["search"]["mode"] == "include"] == [chart["doc"]]
    posted = client.post(f"/Patient/{patient}/Communication/_search", data={"status": "in-progress"})
    assert posted.status_code == 200 and matches(posted.json()) == [f"Communication/{chart['c_sender']}"]
    common = client.get(f"/Patient/{patient}/*", params={"_id": chart["t_for"]}).json()
    assert matches(common) == [f"Task/{chart['t_for']}"]


def test_compartment_errors(client, chart):
    assert client.get("/Observation/x/Communication").status_code == 404  # not a compartment
    assert client.get("/Patient/x/Library").status_code == 404  # never in the Patient compartment
    assert client.get("/Patient/x/Nonsense").status_code == 404
    assert client.get("/Patient/x/Communication/extra").status_code == 404
    assert client.delete("/Patient/x/Communication").status_code == 405
    assert client.post("/Patient/x/Communication", json={}).status_code == 405
    response = client.get("/Observation/x/*")
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    assert client.get("/Patient/nobody/Communication").json().get("total") == 0


def test_encounter_compartment_holds_the_encounter_itself(client):
    encounter = create(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
    observation = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                  "encounter": ref("Encounter", encounter)})
    create(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
    bundle = client.get(f"/Encounter/{encounter}/*").json()
    assert matches(bundle) == sorted([f"Encounter/{encounter}", f"Observation/{observation}"])


def test_every_compartment_parameter_is_a_reference_search_parameter():
    from fhir_server.search.parameters import parameters_for
    for compartment_type, members in compartments().items():
        for member, params in members.items():
            for param in params:
                if param != "{def}":
                    assert parameters_for(member)[param].type == "reference", (compartment_type, member, param)
