"""`fhir-server storage gc`: objects no version references go after the grace period; referenced ones stay."""

import hashlib
import io
import os
import subprocess
import sys

import psycopg

from fhir_server.documents.store import object_store
from fhir_server.settings import Settings
from tests.documents.conftest import Store
from tests.documents.samples import PDF, PNG, TEXT


def gc(database_url: str, store: Store, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "fhir_server.cli", "storage", "gc", *args],
                            env={**os.environ, "FHIR_DATABASE_URL": database_url, **store.env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_gc_removes_only_unreferenced_objects_after_the_grace_period(
        configured_client, store: Store, database_url: str, db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        kept = (await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})).json()
        deleted = (await client.post("/Binary", content=PNG, headers={"Content-Type": "image/png"})).json()
        await client.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current",
                                                      "content": [{"attachment": {"url": f"Binary/{kept['id']}"}}]})
        assert (await client.delete(f"/Binary/{deleted['id']}")).status_code == 204
    # An object whose resource write rolled back (stored, no row) and one recorded but never referenced.
    orphan = hashlib.sha256(TEXT).hexdigest()
    object_store(Settings(**{key.removeprefix("FHIR_").lower(): value for key, value in store.env.items()})
                 ).put(orphan, io.BytesIO(TEXT), "text/plain")
    recorded = hashlib.sha256(b"recorded").hexdigest()
    db.execute("INSERT INTO document_object (sha256, sha1, size, content_type) VALUES (%s, 'x', 8, 'text/plain')",
               (recorded,))
    everything = sorted([hashlib.sha256(PDF).hexdigest(), hashlib.sha256(PNG).hexdigest(), orphan])
    assert store.objects() == everything

    assert "removed: 0 objects" in gc(database_url, store)  # default grace: 24 hours
    assert store.objects() == everything

    output = gc(database_url, store, "--grace-hours", "0")
    assert "removed: 2 objects" in output and "kept: 2" in output
    # The deleted Binary's history still references its bytes: they stay.
    assert store.objects() == sorted([hashlib.sha256(PDF).hexdigest(), hashlib.sha256(PNG).hexdigest()])
    assert {row[0] for row in db.execute("SELECT sha256 FROM document_object")} == {
        hashlib.sha256(PDF).hexdigest(), hashlib.sha256(PNG).hexdigest()}


async def test_an_upload_after_gc_stores_the_bytes_again(configured_client, store: Store, database_url: str,
                                                        db: psycopg.Connection) -> None:
    async with configured_client(**store.env) as client:
        failed = await client.put("/Binary/b1", content=PDF, headers={"Content-Type": "application/pdf",
                                                                      "If-Match": 'W/"5"'})
        assert failed.status_code == 412  # the object was stored before the resource write failed
        assert store.objects() == [hashlib.sha256(PDF).hexdigest()]
        gc(database_url, store, "--grace-hours", "0")
        assert store.objects() == []
        again = await client.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf"})
        assert again.status_code == 201
        assert (await client.get(f"/Binary/{again.json()['id']}")).content == PDF
