"""A tenant removed or added by `fhir-server tenants` while servers run: they follow at once (NOTIFY tenants),
without answering from what they knew of it before."""

import httpx
import psycopg

from tests.tenancy.conftest import cli


def _unknown(response: httpx.Response, name: str) -> bool:
    body = response.json()
    return response.status_code == 404 and body["resourceType"] == "OperationOutcome" \
        and f"No tenant '{name}'" in body["issue"][0]["diagnostics"]


def test_a_removed_tenant_is_404_at_once(database_url: str, tenancy) -> None:
    cli(database_url, "tenants", "add", "delta")
    with httpx.Client(base_url=tenancy.url("delta"), timeout=30) as delta, \
            psycopg.connect(database_url, autocommit=True) as db:
        # Every pooled connection serves delta (the pool hands them out in turn) and the name is cached.
        for _ in range(40):
            assert delta.get("/metadata").status_code == 200
        public_rows = db.execute("SELECT count(*) FROM public.resource").fetchone()[0]

        cli(database_url, "tenants", "remove", "delta", "--yes")
        for _ in range(40):
            assert _unknown(delta.get("/metadata"), "delta")
            assert _unknown(delta.post("/Patient", json={"resourceType": "Patient"}), "delta")
        # Nothing fell through to the tables in public.
        assert db.execute("SELECT count(*) FROM public.resource").fetchone()[0] == public_rows

        # Known as missing now; registered again, it is served at once.
        cli(database_url, "tenants", "add", "delta")
        try:
            assert delta.get("/metadata").status_code == 200
        finally:
            cli(database_url, "tenants", "remove", "delta", "--yes")
        assert _unknown(delta.get("/metadata"), "delta")
