"""SMART scopes on documents: Binary.securityContext decides who reads a Binary; $download is a DocumentReference read."""

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
