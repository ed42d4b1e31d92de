"""DocumentReference pointing at a stored Binary: server-set size and hashes, $download, logical deletes."""

import base64
import hashlib

import httpx

from fhir_server.documents.references import CONTENT_SHA256
from tests.documents.conftest import Store
from tests.documents.samples import PDF, TEXT


def document_reference(binary_id: str, **attachment: object) -> dict:
    return {"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"url": f"Binary/{binary_id}", "title": "knee MRI.pdf", **attachment}}]}


async def test_attachment_size_and_hashes_are_set_by_the_server(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        binary = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()
        created = await client.post("/DocumentReference", json=document_reference(
            binary["id"], size=1, hash=base64.b64encode(b"wrong").decode()))
        assert created.status_code == 201, created.text
        attachment = created.json()["content"][0]["attachment"]
        assert attachment["size"] == len(PDF)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(PDF).digest()).decode()
        assert attachment["extension"] == [{"url": CONTENT_SHA256, "valueString": hashlib.sha256(PDF).hexdigest()}]
        assert attachment["contentType"] == "application/pdf"
        # Absolute URLs below this server's base are the same Binary; other URLs are left alone.
        absolute = await client.post("/DocumentReference", json=document_reference(
            f"x", url=f"http://test/fhir/Binary/{binary['id']}"))
        assert absolute.json()["content"][0]["attachment"]["size"] == len(PDF)
        elsewhere = await client.post("/DocumentReference", json=document_reference(
            "x", url="https://elsewhere.example/scan.pdf", size=7))
        assert elsewhere.json()["content"][0]["attachment"] == {"url": "https://elsewhere.example/scan.pdf",
                                                                 "title": "knee MRI.pdf", "size": 7}


async def test_download(configured_client, store: Store) -> None:
    async with configured_client(FHIR_PRESIGN_SECONDS="120", **store.env) as client:
        binary = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()
        document = (await client.post("/DocumentReference", json=document_reference(binary["id"]))).json()
        response = await client.get(f"/DocumentReference/{document['id']}/$download")
        if store.kind == "s3":
            assert response.status_code == 303, response.text
            url = response.headers["location"]
            assert url.startswith(store.endpoint) and "X-Amz-Expires=120" in url
            fetched = httpx.get(url)  # no credentials: the signature in the URL is the permission
            assert fetched.status_code == 200
            assert fetched.content == PDF
            assert fetched.headers["content-type"] == "application/pdf"
            assert "knee%20MRI.pdf" in fetched.headers["content-disposition"]
        else:
            assert response.status_code == 200
            assert response.content == PDF
            assert response.headers["content-type"].startswith("application/pdf")
            assert response.headers["content-length"] == str(len(PDF))
        missing = await client.get("/DocumentReference/nope/$download")
        assert missing.status_code == 404
        bare = (await client.post("/DocumentReference", json=document_reference("x", url="https://x.example/a"))).json()
        assert (await client.get(f"/DocumentReference/{bare['id']}/$download")).status_code == 404


async def test_download_picks_the_content_by_index(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        pdf_id = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()["id"]
        text_id = (await client.post("/Binary", content=TEXT, headers={"Content-Type": "text/plain"})).json()["id"]
        document = (await client.post("/DocumentReference", json={
            "resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"url": f"Binary/{pdf_id}"}}, {"attachment": {"url": f"Binary/{text_id}"}}],
        })).json()
        response = await client.get(f"/DocumentReference/{document['id']}/$download?index=1",
                                    follow_redirects=False)
        if store.kind == "s3":
            response = httpx.get(response.headers["location"])
        assert response.content == TEXT
        bad = await client.get(f"/DocumentReference/{document['id']}/$download?index=2")
        assert bad.status_code == 400


async def test_deletes_are_logical_and_history_keeps_the_bytes(configured_client, store: Store) -> None:
    async with configured_client(**store.env) as client:
        binary = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()
        document = (await client.post("/DocumentReference", json=document_reference(binary["id"]))).json()
        assert (await client.delete(f"/DocumentReference/{document['id']}")).status_code == 204
        assert (await client.get(f"/DocumentReference/{document['id']}")).status_code == 410
        assert (await client.get(f"/DocumentReference/{document['id']}/$download")).status_code == 410
        assert (await client.delete(f"/Binary/{binary['id']}")).status_code == 204
        assert (await client.get(f"/Binary/{binary['id']}")).status_code == 410
        assert (await client.get(f"/Binary/{binary['id']}/_history/1")).content == PDF
        history = (await client.get(f"/DocumentReference/{document['id']}/_history")).json()
        assert [entry["request"]["method"] for entry in history["entry"]] == ["DELETE", "POST"]
    assert store.objects() == [hashlib.sha256(PDF).hexdigest()]


async def test_capability_statement_lists_download(configured_client) -> None:
    async with configured_client() as client:
        statement = (await client.get("/metadata")).json()
    document_reference, = [r for r in statement["rest"][0]["resource"] if r["type"] == "DocumentReference"]
    assert {"name": "download", "definition": "http://fhir-server.dev/OperationDefinition/DocumentReference-download"
            } in document_reference["operation"]
