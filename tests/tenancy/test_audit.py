"""With FHIR_TENANCY=url, each tenant's audit records stay in its own schema and name it as `source.site`."""

import time


def test_audit_records_stay_in_their_tenant(http, tenant_db) -> None:
    pid = http["alpha"].post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    assert http["alpha"].get(f"/Patient/{pid}").status_code == 200
    assert http["beta"].get(f"/Patient/{pid}").status_code == 404

    def records(tenant: str) -> list[str]:
        """The tenant's audit records naming the patient: waiting in audit_log or already AuditEvents (the
        worker moves them from one to the other at any time; one statement sees each exactly once)."""
        return [row[0] for row in tenant_db[tenant].execute(
            "SELECT e FROM (SELECT convert_from(event, 'UTF8') AS e FROM audit_log UNION ALL "
            "SELECT convert_from(content, 'UTF8') FROM resource WHERE resource_type = 'AuditEvent' "
            "AND content IS NOT NULL) a WHERE position(%s in e) > 0", (f"Patient/{pid}",)).fetchall()]

    deadline = time.monotonic() + 20
    while (len(records("alpha")) < 2 or not records("beta")) and time.monotonic() < deadline:
        time.sleep(0.1)
    alpha = records("alpha")
    assert len(alpha) == 2 and all('"site":"alpha"' in event for event in alpha)
    beta = records("beta")  # beta's failed read of alpha's id is beta's record, naming beta
    assert len(beta) == 1 and '"site":"beta"' in beta[0] and '"outcome":"4"' in beta[0]
