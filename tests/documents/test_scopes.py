"""SMART scopes on documents: Binary.securityContext decides who reads a Binary; $download is a DocumentReference read."""

import base64
from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.auth.test_enforcement import bearer, patient_token, system_token
from tests.documents.conftest import Store
from tests.documents.samples import PDF


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


async def test_binary_security_context_and_download_under_patient_scopes(
        configured_client, store: Store, aconn: psycopg.AsyncConnection) -> None:
    async with configured_client(FHIR_AUTH="smart", **store.env) as client:
        admin = bearer(await system_token(aconn, client, "system/*.cruds"))
        patients = {name: (await client.post("/Patient", json={"resourceType": "Patient"}, headers=admin)).json()["id"]
                    for name in ("a", "b")}
        own = (await client.post("/Binary", content=PDF, headers={
            **admin, "Content-Type": "application/pdf", "X-Security-Context": f"Patient/{patients['a']}"})).json()
        unbound = (await client.post("/Binary", content=PDF, headers={**admin, "Content-Type": "application/pdf"})
                   ).json()
        document = (await client.post("/DocumentReference", headers=admin, json={
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": f"Patient/{patients['a']}"},
            "content": [{"attachment": {"url": f"Binary/{unbound['id']}"}}]})).json()

        scopes = "patient/Patient.r patient/Binary.r patient/DocumentReference.r"
        alice = bearer(await patient_token(aconn, client, patients["a"], scopes))
        bob = bearer(await patient_token(aconn, client, patients["b"], scopes))

        assert (await client.get(f"/Binary/{own['id']}", headers=alice)).content == PDF
        as_json = await client.get(f"/Binary/{own['id']}", headers={**alice, "Accept": "application/fhir+json"})
        assert as_json.status_code == 200 and "data" in as_json.json()
        assert (await client.get(f"/Binary/{own['id']}/_history/1", headers=alice)).status_code == 200
        assert (await client.get(f"/Binary/{own['id']}", headers=bob)).status_code == 404
        # A Binary without a securityContext is in no patient's compartment.
        assert (await client.get(f"/Binary/{unbound['id']}", headers=alice)).status_code == 404
        assert (await client.get(f"/Binary/{unbound['id']}", headers=admin)).content == PDF

        # $download: authorized as reading the DocumentReference (alice's), not by the Binary's securityContext.
        download = await client.get(f"/DocumentReference/{document['id']}/$download", headers=alice)
        assert download.status_code == (303 if store.kind == "s3" else 200)
        assert (await client.get(f"/DocumentReference/{document['id']}/$download", headers=bob)).status_code == 404
        assert (await client.get(f"/DocumentReference/{document['id']}/$download")).status_code == 401

        # Without a Binary scope, no Binary is readable; the securityContext's type needs read access as well.
        no_binary = bearer(await patient_token(aconn, client, patients["a"], "patient/Patient.r"))
        assert (await client.get(f"/Binary/{own['id']}", headers=no_binary)).status_code == 403
        no_patient = bearer(await patient_token(aconn, client, patients["a"], "patient/Binary.r"))
        assert (await client.get(f"/Binary/{own['id']}", headers=no_patient)).status_code == 403

        # Uploads need create permission on Binary, refused before the body is read.
        refused = await client.post("/Binary", content=PDF, headers={**alice, "Content-Type": "application/pdf"})
        assert refused.status_code == 403


async def test_patient_scoped_uploads_need_a_security_context_in_the_compartment(
        configured_client, store: Store, aconn: psycopg.AsyncConnection) -> None:
    async with configured_client(FHIR_AUTH="smart", **store.env) as client:
        admin = bearer(await system_token(aconn, client, "system/*.cruds"))
        patients = {name: (await client.post("/Patient", json={"resourceType": "Patient"}, headers=admin)).json()["id"]
                    for name in ("a", "b")}
        documents = {name: (await client.post("/DocumentReference", headers=admin, json={
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": f"Patient/{patients[name]}"}, "content": [{"attachment": {"title": "scan"}}]})
            ).json()["id"] for name in ("a", "b")}
        alice = bearer(await patient_token(aconn, client, patients["a"],
                                           "patient/Binary.crs patient/Patient.r patient/DocumentReference.r"))
        bob = bearer(await patient_token(aconn, client, patients["b"], "patient/*.read"))

        def upload(headers: dict[str, str], context: str | None = None):
            extra = {"X-Security-Context": context} if context else {}
            return client.post("/Binary", content=PDF, headers={**headers, "Content-Type": "application/pdf", **extra})

        own = await upload(alice, f"Patient/{patients['a']}")
        assert own.status_code == 201, own.text
        assert own.json()["securityContext"] == {"reference": f"Patient/{patients['a']}"}
        attached = await upload(alice, f"DocumentReference/{documents['a']}")
        assert attached.status_code == 201
        assert (await client.get(f"/Binary/{own.json()['id']}", headers=alice)).content == PDF
        assert (await client.get(f"/Binary/{attached.json()['id']}", headers=alice)).content == PDF
        assert (await client.get(f"/Binary/{own.json()['id']}", headers=bob)).status_code == 404

        writer = bearer(await patient_token(aconn, client, patients["a"], "patient/*.write"))
        written = await upload(writer, f"Patient/{patients['a']}")
        assert written.status_code == 201
        as_json = await client.post("/Binary", headers=writer, json={
            "resourceType": "Binary", "contentType": "application/pdf", "data": base64.b64encode(PDF).decode(),
            "securityContext": {"reference": f"DocumentReference/{documents['a']}"}})
        assert as_json.status_code == 201, as_json.text

        count = (await (await aconn.execute("SELECT count(*) FROM resource WHERE resource_type = 'Binary'"))
                 .fetchone())[0]
        for refused in (await upload(alice), await upload(alice, f"Patient/{patients['b']}"),
                        await upload(alice, f"DocumentReference/{documents['b']}"),
                        await upload(alice, "Patient/nobody"),
                        await client.post("/Binary", headers=writer, json={
                            "resourceType": "Binary", "contentType": "application/pdf",
                            "data": base64.b64encode(PDF).decode(),
                            "securityContext": {"reference": f"Patient/{patients['b']}"}}),
                        await client.post("/Binary", headers=writer, json={
                            "resourceType": "Binary", "contentType": "application/pdf",
                            "data": base64.b64encode(PDF).decode()})):
            assert refused.status_code == 403, refused.text
            assert refused.json()["resourceType"] == "OperationOutcome"
        assert (await (await aconn.execute("SELECT count(*) FROM resource WHERE resource_type = 'Binary'"))
                .fetchone())[0] == count

        # Someone else's Binary cannot be replaced, nor moved into the compartment by an update.
        theirs = (await upload(admin, f"Patient/{patients['b']}")).json()["id"]
        replaced = await client.put(f"/Binary/{theirs}", content=PDF, headers={
            **writer, "Content-Type": "application/pdf", "X-Security-Context": f"Patient/{patients['a']}"})
        assert replaced.status_code == 404

        # Search and history under patient/ scopes see the patient's Binaries, found by their securityContext.
        searched = (await client.get("/Binary", headers=alice)).json()
        assert {e["resource"]["id"] for e in searched["entry"]} == {
            response.json()["id"] for response in (own, attached, written, as_json)}
        history = (await client.get("/Binary/_history", headers=bob)).json()
        assert [e["resource"]["id"] for e in history["entry"]] == [theirs]
