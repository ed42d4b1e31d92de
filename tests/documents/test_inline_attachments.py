"""DocumentReference attachments sent inline (`attachment.data`) are moved to the object store on create and update."""

import base64
import hashlib

import psycopg

from tests.documents.conftest import Store
from tests.documents.samples import PNG, TEXT


def inline(data: bytes, content_type: str) -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p1"},
            "content": [{"attachment": {"contentType": content_type, "title": "letter.txt",
                                        "data": base64.b64encode(data).decode()}}]}


async def test_inline_data_becomes_a_binary_in_the_store(configured_client, store: Store,
                                                         db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        response = await client.post("/DocumentReference", json=inline(TEXT, "text/plain"))
        assert response.status_code == 201, response.text
        attachment = response.json()["content"][0]["attachment"]
        assert "data" not in attachment and attachment["url"].startswith("Binary/")
        assert attachment["size"] == len(TEXT)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(TEXT).digest()).decode()
        assert store.objects() == [hashlib.sha256(TEXT).hexdigest()]
        stored = db.execute("SELECT content::text FROM resource WHERE resource_type = 'DocumentReference'").fetchone()[0]
        assert base64.b64encode(TEXT).decode() not in stored  # the bytes are not in PostgreSQL

        download = await client.get(f"/DocumentReference/{response.json()['id']}/$download")
        if download.status_code == 303:
            assert store.kind == "s3"
        else:
            assert download.status_code == 200 and download.content == TEXT
        binary = await client.get(f"/{attachment['url']}", headers={"Accept": "text/plain"})
        assert binary.status_code == 200 and binary.content == TEXT
        binary = await client.get(f"/{attachment['url']}", headers={"Accept": "application/fhir+json"})
        assert binary.json()["securityContext"] == {"reference": "Patient/p1"}

        document_id, first_url = response.json()["id"], attachment["url"]
        replaced = {**inline(PNG, "image/png"), "id": document_id}
        response = await client.put(f"/DocumentReference/{document_id}", json=replaced)
        assert response.status_code == 200, response.text
        attachment = response.json()["content"][0]["attachment"]
        assert attachment["url"] != first_url and attachment["size"] == len(PNG)
        assert hashlib.sha256(PNG).hexdigest() in store.objects()


async def test_inline_data_is_checked_like_an_upload(configured_client, store: Store, db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        for document, status in [(inline(b"not a png at all", "image/png"), 415),
                                 (inline(TEXT, "application/x-msdownload"), 415),
                                 ({**inline(TEXT, "text/plain"), "content": [{"attachment": {
                                     "contentType": "text/plain", "data": "%%%"}}]}, 400)]:
            response = await client.post("/DocumentReference", json=document)
            assert response.status_code == status, response.text
            assert response.json()["resourceType"] == "OperationOutcome"
        # Nothing was written: no Binary, no DocumentReference.
        assert db.execute("SELECT count(*) FROM resource").fetchone()[0] == 0
