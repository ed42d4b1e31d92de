"""Binary through the standard API with raw content, against the filesystem store and a real S3 endpoint."""

import base64
import hashlib

import httpx
import psycopg

from fhir_server.documents.references import CONTENT_SHA256
from tests.documents.conftest import Store, s3_client
from tests.documents.samples import PDF, PNG, TEXT, pdf


def outcome_text(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(issue["diagnostics"] for issue in body["issue"])


async def test_raw_upload_and_read_back(configured_client, store: Store, db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        created = await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})
        assert created.status_code == 201, created.text
        binary = created.json()
        assert binary["contentType"] == "application/pdf" and "data" not in binary
        sha256 = hashlib.sha256(PDF).hexdigest()
        assert binary["_data"]["extension"] == [{"url": CONTENT_SHA256, "valueString": sha256}]
        assert created.headers["location"].endswith(f"/Binary/{binary['id']}/_history/1")

        raw = await client.get(f"/Binary/{binary['id']}", headers={"Accept": "application/pdf"})
        assert raw.status_code == 200
        assert raw.content == PDF
        assert raw.headers["content-type"].startswith("application/pdf")
        assert raw.headers["etag"] == 'W/"1"'
        assert (await client.get(f"/Binary/{binary['id']}", headers={"Accept": "*/*"})).content == PDF

        as_json = await client.get(f"/Binary/{binary['id']}", headers={"Accept": "application/fhir+json"})
        assert as_json.headers["content-type"].startswith("application/fhir+json")
        assert base64.b64decode(as_json.json()["data"]) == PDF
        assert base64.b64decode((await client.get(f"/Binary/{binary['id']}?_format=json")).json()["data"]) == PDF
    assert store.objects() == [sha256]
    # The bytes are in the store, not in PostgreSQL.
    stored = db.execute("SELECT content FROM resource_version WHERE resource_type = 'Binary'").fetchone()[0]
    assert b"%PDF" not in bytes(stored) and base64.b64encode(PDF)[:20] not in bytes(stored)


async def test_identical_bytes_are_stored_once(configured_client, store: Store, db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        first = (await client.post("/Binary", content=PNG, headers={"Content-Type": "image/png"})).json()
        second = (await client.post("/Binary", content=PNG, headers={"Content-Type": "image/png"})).json()
        as_json = await client.post("/Binary", json={"resourceType": "Binary", "contentType": "image/png",
                                                     "data": base64.b64encode(PNG).decode()})
        assert as_json.status_code == 201, as_json.text
        assert len({first["id"], second["id"], as_json.json()["id"]}) == 3
    assert store.objects() == [hashlib.sha256(PNG).hexdigest()]
    assert db.execute("SELECT count(*) FROM document_object").fetchone()[0] == 1


async def test_update_with_raw_content_and_security_context_header(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        put = await client.put("/Binary/scan-1", content=TEXT, headers={
            "Content-Type": "text/plain; charset=utf-8", "X-Security-Context": "Patient/p1"})
        assert put.status_code == 201, put.text
        assert put.json()["securityContext"] == {"reference": "Patient/p1"}
        replaced = await client.put("/Binary/scan-1", content=PDF, headers={"Content-Type": "application/pdf"})
        assert replaced.status_code == 200 and replaced.json()["meta"]["versionId"] == "2"
        assert (await client.get("/Binary/scan-1")).content == PDF
        old = await client.get("/Binary/scan-1/_history/1")
        assert old.content == TEXT and old.headers["content-type"].startswith("text/plain")
    assert len(store.objects()) == 2


async def test_json_binary_data_goes_to_the_store(configured_client, store: Store, db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        created = await client.post("/Binary", json={"resourceType": "Binary", "contentType": "text/plain",
                                                     "data": base64.b64encode(TEXT).decode()})
        assert created.status_code == 201, created.text
        assert "data" not in created.json()
        fhir_id = created.json()["id"]
        assert (await client.get(f"/Binary/{fhir_id}")).content == TEXT
        # A JSON update that keeps the content (no data, the server's hash) keeps the object.
        kept = {**created.json(), "securityContext": {"reference": "Patient/p2"}}
        updated = await client.put(f"/Binary/{fhir_id}", json=kept)
        assert updated.status_code == 200, updated.text
        assert base64.b64decode((await client.get(f"/Binary/{fhir_id}", headers={
            "Accept": "application/fhir+json"})).json()["data"]) == TEXT
    rows = db.execute("SELECT content FROM resource_version WHERE resource_type = 'Binary'").fetchall()
    assert all(base64.b64encode(TEXT)[:16] not in bytes(row[0]) for row in rows)
    assert store.objects() == [hashlib.sha256(TEXT).hexdigest()]


async def test_a_client_cannot_point_a_binary_at_an_object(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        other = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()
        forged = {"resourceType": "Binary", "contentType": "application/pdf", "_data": other["_data"]}
        refused = await client.post("/Binary", json=forged)
        assert refused.status_code == 400
        assert "set by the server" in outcome_text(refused)
        # Changing the type of kept content is checked against the stored bytes.
        relabelled = await client.put(f"/Binary/{other['id']}", json={**other, "contentType": "image/png"})
        assert relabelled.status_code == 415, relabelled.text


async def test_size_limit(configured_client, store: Store) -> None:
    async with configured_client(FHIR_DOCUMENT_MAX_BYTES="2000", **store.env) as client:
        assert (await client.post("/Binary", content=pdf(2000), headers={
            "Content-Type": "application/pdf"})).status_code == 201
        declared = await client.post("/Binary", content=pdf(2001), headers={"Content-Type": "application/pdf"})
        assert declared.status_code == 413
        assert "at most 2000 bytes" in outcome_text(declared)

        async def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(10):
                yield pdf(500)

        streamed = await client.post("/Binary", content=chunks(), headers={"Content-Type": "application/pdf"})
        assert streamed.status_code == 413
        as_json = await client.post("/Binary", json={"resourceType": "Binary", "contentType": "application/pdf",
                                                      "data": base64.b64encode(pdf(2001)).decode()})
        assert as_json.status_code == 413
    assert len(store.objects()) == 1


async def test_content_types_and_magic_numbers(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        zipped = await client.post("/Binary", content=b"PK\x03\x04rest", headers={"Content-Type": "application/zip"})
        assert zipped.status_code == 415
        assert "application/zip are not accepted" in outcome_text(zipped)
        lie = await client.post("/Binary", content=PNG, headers={"Content-Type": "application/pdf"})
        assert lie.status_code == 415
        assert "declared application/pdf" in outcome_text(lie) and "image/png" in outcome_text(lie)
        json_lie = await client.post("/Binary", json={"resourceType": "Binary", "contentType": "application/pdf",
                                                      "data": base64.b64encode(b"MZ\x90\x00 not a pdf").decode()})
        assert json_lie.status_code == 415
        binary_as_text = await client.post("/Binary", content=b"\x00\x01\x02ELF", headers={"Content-Type": "text/plain"})
        assert binary_as_text.status_code == 415
    async with configured_client(FHIR_DOCUMENT_MIME_TYPES="text/plain", **store.env) as client:
        assert (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})
                ).status_code == 415
        assert (await client.post("/Binary", content=TEXT, headers={"Content-Type": "text/plain"})).status_code == 201
    assert store.objects() == [hashlib.sha256(TEXT).hexdigest()]


async def test_s3_objects_are_encrypted_at_rest(configured_client, store: Store) -> None:
    if store.kind != "s3":
        return
    async with configured_client(**store.env) as client:
        await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})
    head = s3_client(store.endpoint).head_object(Bucket=store.env["FHIR_S3_BUCKET"],
                                                 Key="sha256/" + hashlib.sha256(PDF).hexdigest())
    assert head["ServerSideEncryption"] == "AES256"


async def test_binary_data_in_a_transaction_goes_to_the_store(configured_client, store: Store,
                                                              db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        response = await client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:2b7c1b8e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Binary", "contentType": "text/plain",
                          "data": base64.b64encode(TEXT).decode()},
             "request": {"method": "POST", "url": "Binary"}},
            {"resource": {"resourceType": "DocumentReference", "status": "current", "content": [
                {"attachment": {"url": "urn:uuid:2b7c1b8e-0000-4000-8000-000000000001"}}]},
             "request": {"method": "POST", "url": "DocumentReference"}},
        ]})
        assert response.status_code == 200, response.text
        binary_id = response.json()["entry"][0]["response"]["location"].split("Binary/")[1].split("/")[0]
        assert (await client.get(f"/Binary/{binary_id}")).content == TEXT
    assert store.objects() == [hashlib.sha256(TEXT).hexdigest()]
    stored = db.execute("SELECT content FROM resource WHERE resource_type = 'Binary'").fetchone()[0]
    assert base64.b64encode(TEXT)[:16] not in bytes(stored)
