"""Embeddings end to end with the built-in provider: writes schedule the worker, which chunks and embeds the
text of Communications, DocumentReferences (text and PDF attachments in the store), QuestionnaireResponses and
narratives; $semantic-search finds them, filtered like a search; updates replace chunks, deletes remove them."""

from pathlib import Path

import pytest

from tests.embeddings.helpers import chunks, hits, settled
from tests.embeddings.samples import pdf_with_text

KNEE = ("Radiology letter. The MRI of the left knee shows a complex tear of the medial meniscus. "
        "Orthopaedic referral is advised.")
ECHO = "Cardiology letter: the echocardiogram shows a normal ejection fraction and no valve disease."
PNEUMONIA = "Discharge summary. Community acquired pneumonia treated with oral antibiotics for seven days."


def communication(patient: str, text: str) -> dict:
    return {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{patient}"},
            "payload": [{"contentString": text}]}


def document(patient: str, binary_id: str, content_type: str, description: str | None = None) -> dict:
    resource = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient}"},
                "content": [{"attachment": {"contentType": content_type, "url": f"Binary/{binary_id}"}}]}
    if description:
        resource["description"] = description
    return resource


async def upload(client, content_type: str, data: bytes) -> str:
    response = await client.post("/fhir/Binary", content=data, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def create(client, resource: dict) -> str:
    response = await client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def search(client, path: str = "/fhir/$semantic-search", **query: str) -> dict:
    response = await client.get(path, params=query)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def app_env(tmp_path: Path) -> dict[str, str]:
    return {"FHIR_DOCUMENT_DIR": str(tmp_path / "documents"), "FHIR_EMBEDDINGS": "hashed"}


async def test_sources_are_chunked_embedded_and_found(background_app, app_env, db) -> None:
    async with background_app(**app_env) as (_, client):
        ann = await create(client, {"resourceType": "Patient", "name": [{"family": "Ann"}]})
        bob = await create(client, {"resourceType": "Patient", "name": [{"family": "Bob"}]})
        knee = await create(client, communication(ann, KNEE))
        echo = await create(client, document(ann, await upload(client, "text/plain", ECHO.encode()), "text/plain"))
        pneumonia = await create(client, document(bob, await upload(client, "application/pdf", pdf_with_text(PNEUMONIA)),
                                                  "application/pdf", "Hospital discharge"))
        answers = await create(client, {
            "resourceType": "QuestionnaireResponse", "status": "completed", "subject": {"reference": f"Patient/{ann}"},
            "item": [{"linkId": "1", "text": "How many cigarettes do you smoke a day?",
                      "answer": [{"valueInteger": 20}]},
                     {"linkId": "2", "text": "Do you drink alcohol?", "answer": [{"valueBoolean": False}]}]})
        observation = await create(client, {
            "resourceType": "Observation", "status": "final", "code": {"text": "note"},
            "subject": {"reference": f"Patient/{bob}"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Sprained "
                                                   "<b>ankle</b> after a fall while running.</p></div>"}})
        for resource_type, fhir_id in [("Communication", knee), ("DocumentReference", echo),
                                       ("DocumentReference", pneumonia), ("QuestionnaireResponse", answers),
                                       ("Observation", observation)]:
            await settled(db, resource_type, fhir_id)
        # A Patient without narrative has nothing to embed and scheduled nothing.
        assert db.execute("SELECT count(*) FROM outbox WHERE resource_type = 'Patient'").fetchone()[0] == 0

        assert chunks(db, "Communication", knee) == [(1, "hashed-v1-384", KNEE, [ann])]
        assert chunks(db, "DocumentReference", echo)[0][2] == ECHO
        assert chunks(db, "DocumentReference", pneumonia)[0][2] == f"Hospital discharge {PNEUMONIA}"
        assert chunks(db, "QuestionnaireResponse", answers)[0][2] == (
            "How many cigarettes do you smoke a day?: 20 Do you drink alcohol?: no")
        assert chunks(db, "Observation", observation)[0][2:] == (
            "Sprained ankle after a fall while running.", [bob])

        found = await search(client, query="letter about the knee MRI", _count="3")
        assert found["type"] == "searchset" and hits(found)[0] == f"Communication/{knee}"
        top = found["entry"][0]["search"]
        assert top["mode"] == "match" and 0 < top["score"] <= 1
        assert top["extension"] == [{"url": "http://fhir-server.dev/StructureDefinition/semantic-search-match",
                                     "valueString": KNEE}]
        scores = [entry["search"]["score"] for entry in found["entry"]]
        assert scores == sorted(scores, reverse=True)
        assert hits(await search(client, query="heart ultrasound cardiology"))[0] == f"DocumentReference/{echo}"
        assert hits(await search(client, query="lung infection antibiotics"))[0] == f"DocumentReference/{pneumonia}"
        assert hits(await search(client, query="smoking cigarettes"))[0] == f"QuestionnaireResponse/{answers}"
        assert hits(await search(client, query="ankle sprain"))[0] == f"Observation/{observation}"

        # Standard filters combine with it: _type, patient, and the type level.
        only_documents = hits(await search(client, query="letter", _type="DocumentReference,Communication",
                                           patient=f"Patient/{ann}"))
        assert set(only_documents) == {f"Communication/{knee}", f"DocumentReference/{echo}"}
        by_type = hits(await search(client, "/fhir/DocumentReference/$semantic-search", query="knee MRI letter"))
        assert by_type[0] == f"DocumentReference/{echo}"  # the only DocumentReference that is a letter
        assert all(hit.startswith("DocumentReference/") for hit in by_type)
        assert hits(await search(client, "/fhir/DocumentReference/$semantic-search", query="pneumonia",
                                 patient=f"Patient/{ann}")) == []
        # Queries of no words or stop words only have no keyword matches, only vector ones (maybe none).
        for query in ("???", "the of and"):
            assert (await client.get("/fhir/$semantic-search", params={"query": query})).status_code == 200
        response = await client.post("/fhir/$semantic-search", json={"resourceType": "Parameters", "parameter": [
            {"name": "query", "valueString": "torn meniscus"}, {"name": "_count", "valueInteger": 1}]})
        assert response.status_code == 200 and hits(response.json()) == [f"Communication/{knee}"]


async def test_new_version_replaces_chunks_and_delete_removes_them(background_app, app_env, db) -> None:
    async with background_app(**app_env) as (_, client):
        knee = await create(client, communication("p1", KNEE))
        await settled(db, "Communication", knee)
        updated = {**communication("p1", ECHO), "id": knee}
        assert (await client.put(f"/fhir/Communication/{knee}", json=updated)).status_code == 200
        await settled(db, "Communication", knee)
        assert chunks(db, "Communication", knee) == [(2, "hashed-v1-384", ECHO, ["p1"])]
        assert f"Communication/{knee}" in hits(await search(client, query="echocardiogram"))
        assert (await client.delete(f"/fhir/Communication/{knee}")).status_code in (200, 204)
        await settled(db, "Communication", knee)
        assert chunks(db, "Communication", knee) == []
        assert f"Communication/{knee}" not in hits(await search(client, query="echocardiogram"))


async def test_the_job_is_idempotent(background_app, app_env, db) -> None:
    async with background_app(**app_env) as (_, client):
        knee = await create(client, communication("p1", KNEE))
        await settled(db, "Communication", knee)
        before = db.execute("SELECT id FROM embedding_chunk WHERE fhir_id = %s", (knee,)).fetchall()
        # The same work once more (a redelivered message, a re-embed request) leaves the rows as they are.
        db.execute("INSERT INTO outbox (topic, resource_type, fhir_id, target, priority, due_at) "
                   "VALUES ('embed', 'Communication', %s, 'chunks', 5, now())", (knee,))
        await settled(db, "Communication", knee)
        assert db.execute("SELECT id FROM embedding_chunk WHERE fhir_id = %s", (knee,)).fetchall() == before


async def test_bad_requests(background_app, app_env) -> None:
    async with background_app(**app_env) as (_, client):
        for query, status in [({}, 400), ({"query": "  "}, 400), ({"query": "x", "_count": "-1"}, 400),
                              ({"query": "x", "_type": "NoSuchType"}, 400)]:
            response = await client.get("/fhir/$semantic-search", params=query)
            assert response.status_code == status and response.json()["resourceType"] == "OperationOutcome"
        response = await client.get("/fhir/Communication/$semantic-search", params={"query": "x", "_type": "Patient"})
        assert response.status_code == 400
        response = await client.get("/fhir/$semantic-search", params={"query": "x", "nonsense": "1"},
                                    headers={"Prefer": "handling=strict"})
        assert response.status_code == 400
