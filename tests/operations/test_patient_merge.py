"""Patient/$merge and $unmerge: references moved everywhere, preview, undo, and the 422 paths."""

import json
import threading

import httpx
import pytest

from fhir_server.validation import validate_resource

MRN_SYSTEM = "urn:fhir-server:mrn"


def create(client: httpx.Client, body: dict) -> dict:
    response = client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def ref(patient_id: str) -> dict:
    return {"reference": f"Patient/{patient_id}"}


def domain_resources(source: str, practitioner: str) -> list[dict]:
    """One resource of each domain type, referencing the source in plain and nested places."""
    extension = {"url": "http://example.org/fhir/StructureDefinition/about", "valueReference": ref(source)}
    return [
        {"resourceType": "Communication", "status": "completed", "subject": ref(source),
         "recipient": [ref(source), {"reference": f"Practitioner/{practitioner}"}], "extension": [extension],
         "contained": [{"resourceType": "Basic", "id": "note", "code": {"text": "note"}, "subject": ref(source)}]},
        {"resourceType": "CommunicationRequest", "status": "active", "subject": ref(source),
         "recipient": [ref(source)], "payload": [{"contentReference": ref(source)}]},
        {"resourceType": "Task", "status": "requested", "intent": "order", "for": ref(source), "owner": ref(source),
         "input": [{"type": {"text": "who"}, "valueReference": ref(source)}]},
        {"resourceType": "DocumentReference", "status": "current", "subject": ref(source),
         "content": [{"attachment": {"url": "http://example.org/doc"}}], "author": [ref(source)]},
        {"resourceType": "QuestionnaireResponse", "status": "completed", "subject": ref(source),
         "item": [{"linkId": "1", "answer": [{"valueReference": ref(source)}]}]},
        {"resourceType": "MeasureReport", "status": "complete", "type": "individual",
         "measure": "http://example.org/Measure/1", "subject": ref(source),
         "period": {"start": "2026-01-01", "end": "2026-12-31"}},
        {"resourceType": "Task", "status": "requested", "intent": "order",
         "contained": [{"resourceType": "Patient", "id": "p", "link": [{"other": ref(source), "type": "seealso"}]}],
         "for": {"reference": "#p"}},
    ]


@pytest.fixture
def setup(client: httpx.Client) -> dict:
    practitioner = create(client, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})["id"]
    source = create(client, {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jon"]}],
                             "identifier": [{"system": "urn:ssn", "value": "1"}]})
    target = create(client, {"resourceType": "Patient", "active": True, "name": [{"family": "Doe", "given": ["John"]}]})
    referrers = [create(client, body) for body in domain_resources(source["id"], practitioner)]
    bystander = create(client, {"resourceType": "Task", "status": "draft", "intent": "order", "for": ref(target["id"])})
    return {"source": source, "target": target, "referrers": referrers, "bystander": bystander}


def merge(client: httpx.Client, source: str, target: str, **extra) -> httpx.Response:
    parameters = [{"name": "source-patient", "valueReference": ref(source)},
                  {"name": "target-patient", "valueReference": ref(target)}]
    for name, value in extra.items():
        key = "valueBoolean" if isinstance(value, bool) else "resource"
        parameters.append({"name": name.replace("_", "-"), key: value})
    return client.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": parameters})


def output(response: httpx.Response, name: str) -> dict:
    return next(part["resource"] for part in response.json()["parameter"] if part["name"] == name)


def read(client: httpx.Client, resource: dict) -> dict:
    return client.get(f"/{resource['resourceType']}/{resource['id']}").json()


def test_merge_moves_every_reference_and_records_provenance(client: httpx.Client, setup: dict, db) -> None:
    source, target = setup["source"]["id"], setup["target"]["id"]
    response = merge(client, source, target)
    assert response.status_code == 200, response.text
    for referrer in setup["referrers"]:
        now = read(client, referrer)
        assert now["meta"]["versionId"] == "2", referrer["resourceType"]
        assert f"Patient/{source}" not in json.dumps(now) and f"Patient/{target}" in json.dumps(now)
    assert read(client, setup["bystander"])["meta"]["versionId"] == "1"
    tasks = client.get("/Task", params={"owner": f"Patient/{target}"}).json()
    assert len(tasks["entry"]) == 1

    merged_source = read(client, setup["source"])
    assert merged_source["active"] is False
    assert merged_source["link"] == [{"other": ref(target), "type": "replaced-by"}]
    result = output(response, "result")
    assert result == read(client, setup["target"])
    assert {"other": ref(source), "type": "replaces"} in result["link"]
    copied = [identifier for identifier in result["identifier"] if identifier.get("use") == "old"]
    assert {(identifier["system"], identifier["value"]) for identifier in copied} == {
        (identifier["system"], identifier["value"]) for identifier in setup["source"]["identifier"]}

    issues = " ".join(issue["diagnostics"] for issue in output(response, "outcome")["issue"])
    assert "Task: 2 resource(s)" in issues and "7 resource(s)" in issues
    provenance = client.get("/Provenance").json()["entry"][0]["resource"]
    assert validate_resource(provenance, "Provenance") == []
    assert provenance["activity"]["coding"][0]["code"] == "merge"
    assert len(provenance["target"]) == 9 and len(provenance["entity"]) == 9
    assert output(response, "input")["resourceType"] == "Parameters"


def test_preview_writes_nothing(client: httpx.Client, setup: dict, db) -> None:
    versions = db.execute("SELECT count(*) FROM resource_version").fetchone()[0]
    response = merge(client, setup["source"]["id"], setup["target"]["id"], preview=True)
    assert response.status_code == 200, response.text
    assert db.execute("SELECT count(*) FROM resource_version").fetchone()[0] == versions
    assert "7 resource(s)" in json.dumps(output(response, "outcome"))
    assert {"other": ref(setup["source"]["id"]), "type": "replaces"} in output(response, "result")["link"]


def test_after_a_merge_new_references_to_the_source_are_refused(client: httpx.Client, setup: dict) -> None:
    source, target = setup["source"]["id"], setup["target"]["id"]
    assert merge(client, source, target).status_code == 200
    refused = client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                                         "for": ref(source)})
    assert refused.status_code == 422
    assert f"Patient/{target}" in refused.json()["issue"][0]["diagnostics"]
    everything = client.get(f"/Patient/{source}/$everything")
    assert everything.status_code == 400 and f"Patient/{target}" in everything.text
    assert client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                                      "for": ref(target)}).status_code == 201


def test_unmerge_restores_references_and_both_patients(client: httpx.Client, setup: dict, db) -> None:
    source, target = setup["source"]["id"], setup["target"]["id"]
    merged = merge(client, source, target)
    provenance = merged.json()["parameter"][1]["resource"]["issue"][0]["diagnostics"].split("Provenance/")[1].split()[0]
    response = client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
        {"name": "provenance", "valueReference": {"reference": f"Provenance/{provenance}"}}]})
    assert response.status_code == 200, response.text
    for before in setup["referrers"]:
        now = read(client, before)
        assert now["meta"]["versionId"] == "3"
        assert {k: v for k, v in now.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    for before in (setup["source"], setup["target"]):
        now = read(client, before)
        assert {k: v for k, v in now.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    assert db.execute("SELECT count(*) FROM patient_replaced").fetchone()[0] == 0
    assert client.post("/Task", json={"resourceType": "Task", "status": "draft", "intent": "order",
                                      "for": ref(source)}).status_code == 201
    again = client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": ref(source)}]})
    assert again.status_code == 422


def test_unmerge_keeps_changes_made_since_the_merge(client: httpx.Client, setup: dict) -> None:
    source, target = setup["source"]["id"], setup["target"]["id"]
    assert merge(client, source, target).status_code == 200
    task = read(client, setup["referrers"][2])
    task["status"] = "cancelled"
    assert client.put(f"/Task/{task['id']}", json=task).status_code == 200
    response = client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": ref(source)}]})
    assert response.status_code == 200, response.text
    now = read(client, task)
    assert now["status"] == "cancelled" and now["for"] == ref(source) and now["owner"] == ref(source)


def test_merge_by_identifier_and_result_patient(client: httpx.Client, setup: dict) -> None:
    source, target = setup["source"], setup["target"]
    mrn = next(identifier for identifier in target["identifier"] if identifier["system"] == MRN_SYSTEM)
    result = {"resourceType": "Patient", "id": target["id"], "active": True, "name": [{"family": "Doe-Smith"}],
              "link": [{"other": ref(source["id"]), "type": "replaces"}]}
    response = client.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": "urn:ssn", "value": "1"}},
        {"name": "target-patient-identifier", "valueIdentifier": mrn},
        {"name": "result-patient", "resource": result}]})
    assert response.status_code == 200, response.text
    written = read(client, target)
    assert written["name"] == [{"family": "Doe-Smith"}]
    assert mrn in written["identifier"]  # a result-patient without the MRN keeps the target's


def test_merge_refusals(client: httpx.Client, setup: dict) -> None:
    source, target = setup["source"]["id"], setup["target"]["id"]
    assert merge(client, source, source).status_code == 422
    wrong_id = {"resourceType": "Patient", "id": "elsewhere", "link": [{"other": ref(source), "type": "replaces"}]}
    assert merge(client, source, target, result_patient=wrong_id).status_code == 422
    no_link = {"resourceType": "Patient", "id": target}
    assert merge(client, source, target, result_patient=no_link).status_code == 422
    invalid = {**no_link, "gender": "nope", "link": [{"other": ref(source), "type": "replaces"}]}
    refused = merge(client, source, target, result_patient=invalid)
    assert refused.status_code == 422 and "gender" in refused.text
    not_a_patient = {"resourceType": "Basic", "id": target, "code": {"text": "x"}}
    assert merge(client, source, target, result_patient=not_a_patient).status_code == 400
    nobody = client.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": "urn:dup", "value": "nobody"}},
        {"name": "target-patient", "valueReference": ref(target)}]})
    assert nobody.status_code == 422 and "matches no Patient" in nobody.text
    twins = [create(client, {"resourceType": "Patient", "identifier": [{"system": "urn:dup", "value": "x"}]})
             for _ in range(2)]
    ambiguous = client.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": "urn:dup", "value": "x"}},
        {"name": "target-patient", "valueReference": ref(target)}]})
    assert ambiguous.status_code == 422 and "more than one" in ambiguous.text
    inactive = create(client, {"resourceType": "Patient", "active": False})
    assert merge(client, twins[0]["id"], inactive["id"]).status_code == 422
    assert merge(client, source, target).status_code == 200
    assert merge(client, source, twins[0]["id"]).status_code == 422  # already replaced
    assert merge(client, twins[1]["id"], source).status_code == 422  # target replaced
    assert merge(client, "no-such-patient", target).status_code == 422
    assert client.get("/Patient/$merge").status_code == 405


def test_transactions_racing_a_merge_all_end_correctly(client: httpx.Client, server_url: str, db) -> None:
    """Transactions that lock the merge's referrers in the opposite order, or reference the source after
    locking one, run while the merge rewrites: none fails on a deadlock; each commits whole or is refused
    (422, once the source is merged away), and the merge misses nothing."""
    source = create(client, {"resourceType": "Patient", "name": [{"family": "Race"}]})["id"]
    target = create(client, {"resourceType": "Patient", "name": [{"family": "Race"}]})["id"]

    def observation(patient: str, text: str) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": text}, "subject": ref(patient)}

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(patient, f"seed {index}"), "request": {"method": "POST", "url": "Observation"}}
        for index, patient in enumerate([source] * 300 + [target] * 20)]}
    assert client.post("", json=bundle).status_code == 200
    observations = [row[0] for row in db.execute("SELECT fhir_id FROM resource WHERE resource_type = 'Observation' "
                                                 "ORDER BY id").fetchall()]
    seeded, others = observations[:300], observations[300:]

    def put(fhir_id: str, patient: str, text: str) -> dict:
        return {"resource": {**observation(patient, text), "id": fhir_id},
                "request": {"method": "PUT", "url": f"Observation/{fhir_id}"}}

    def transactions(results: list, started: threading.Event) -> None:
        with httpx.Client(base_url=server_url, timeout=60) as http:
            for round_ in range(24):
                high, low = seeded[-1 - round_], seeded[round_]
                # Rows the merge rewrites, locked last-first (the merge locks first-last) with others between;
                # every third also names the source after its first row lock.
                entries = [put(high, target, f"moved {round_}"),
                           *(put(other, target, f"other {round_}") for other in others),
                           put(low, target, f"moved {round_}")]
                if round_ % 3 == 0:
                    entries.insert(1, put(seeded[100 + round_], source, f"kept {round_}"))
                response = http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
                results.append((round_, response.status_code, response.text))
                started.set()

    results: list = []
    started = threading.Event()
    thread = threading.Thread(target=transactions, args=(results, started))
    thread.start()
    try:
        assert started.wait(30)
        merged = merge(client, source, target)
    finally:
        thread.join(120)
    assert not thread.is_alive()
    assert merged.status_code == 200, merged.text
    assert len(results) == 24
    for round_, status, text in results:
        assert status in (200, 422), text
        if status == 422:
            assert round_ % 3 == 0 and f"merged into Patient/{target}" in text
            continue
        for fhir_id in (seeded[-1 - round_], seeded[round_]):
            assert read(client, {"resourceType": "Observation", "id": fhir_id})["code"]["text"] == f"moved {round_}"
    referencing_source = db.execute(
        "SELECT count(*) FROM resource r WHERE NOT r.deleted AND r.resource_type = 'Observation' AND r.id IN "
        "(SELECT resource_id FROM search_reference WHERE target_type = 'Patient' AND target_id = %s)",
        (source,)).fetchone()[0]
    assert referencing_source == 0


def precise(resource: dict, decimal: str) -> bytes:
    """`resource` as JSON with its one number written as `decimal` (`1.50`: a float would print `1.5`)."""
    return json.dumps(resource).replace("12345.0", decimal).encode()


SCORE = "http://example.org/fhir/StructureDefinition/score"


def test_merge_and_unmerge_keep_written_decimals(client: httpx.Client) -> None:
    """Rewritten referrers, both patients and the result-patient (an operation parameter) keep `1.50` as written."""
    headers = {"Content-Type": "application/fhir+json"}
    source = create(client, {"resourceType": "Patient", "name": [{"family": "Doe"}]})["id"]
    target = create(client, {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["J"]}]})["id"]
    weight = client.post("/Observation", headers=headers, content=precise(
        {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}, "subject": ref(source),
         "valueQuantity": {"value": 12345.0, "unit": "kg"}}, "1.50"))
    assert weight.status_code == 201, weight.text
    observation = f"/Observation/{weight.json()['id']}"
    result_patient = {"resourceType": "Patient", "id": target, "name": [{"family": "Doe", "given": ["J"]}],
                      "extension": [{"url": SCORE, "valueDecimal": 12345.0}],
                      "link": [{"other": ref(source), "type": "replaces"}]}
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": ref(source)},
        {"name": "target-patient", "valueReference": ref(target)},
        {"name": "result-patient", "resource": result_patient}]}
    merged = client.post("/Patient/$merge", headers=headers, content=precise(parameters, "2.50"))
    assert merged.status_code == 200, merged.text
    assert merged.content.count(b'"valueDecimal":2.50') == 2  # the input echoed, and the result
    moved = client.get(observation)
    assert moved.json()["subject"] == ref(target) and moved.json()["meta"]["versionId"] == "2"
    assert b'"value":1.50' in moved.content
    assert b'"valueDecimal":2.50' in client.get(f"/Patient/{target}").content
    undone = client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": ref(source)}]})
    assert undone.status_code == 200, undone.text
    restored = client.get(observation)
    assert restored.json()["subject"] == ref(source) and restored.json()["meta"]["versionId"] == "3"
    assert b'"value":1.50' in restored.content
