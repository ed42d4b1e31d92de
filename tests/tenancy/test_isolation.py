"""Cross-tenant isolation through HTTP: whatever tenant alpha stores, tenant beta can neither read nor change,
by any interaction, search, include, history, Bundle or operation; ids may even be the same in both."""

import httpx

SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient(family: str, ssn: str, **extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "birthDate": "1980-01-02",
            "gender": "female", "identifier": [{"system": SSN, "value": ssn}], **extra}


def observation(subject: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": subject}}


def entries(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return len(response.json().get("entry", []))


def ids(bundle: dict) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", []) if "resource" in entry]


def test_same_id_in_two_tenants_are_two_resources(http: dict[str, httpx.Client]) -> None:
    alpha, beta = http["alpha"], http["beta"]
    assert alpha.put("/Patient/shared", json={**patient("Alpha", "1"), "id": "shared"}).status_code == 201
    assert beta.put("/Patient/shared", json={**patient("Beta", "2"), "id": "shared"}).status_code == 201
    assert alpha.put("/Patient/shared", json={**patient("Alpha2", "1"), "id": "shared"}).status_code == 200

    assert alpha.get("/Patient/shared").json()["name"][0]["family"] == "Alpha2"
    assert beta.get("/Patient/shared").json()["name"][0]["family"] == "Beta"
    assert beta.get("/Patient/shared/_history/2").status_code == 404
    assert beta.get("/Patient/shared/_history/1").json()["name"][0]["family"] == "Beta"
    assert entries(alpha.get("/Patient/shared/_history")) == 2
    assert entries(beta.get("/Patient/shared/_history")) == 1


def test_reads_searches_and_history_do_not_cross(http: dict[str, httpx.Client], tenancy) -> None:
    alpha, beta = http["alpha"], http["beta"]
    created = alpha.post("/Patient", json=patient("Lonely", "123-45-6789"))
    assert created.status_code == 201
    assert created.headers["location"].startswith(f"{tenancy.url('alpha')}/Patient/")
    pid = created.json()["id"]
    alpha.post("/Observation", json=observation(f"Patient/{pid}"))

    assert beta.get(f"/Patient/{pid}").status_code == 404
    assert beta.get(f"/Patient/{pid}/_history/1").status_code == 404
    assert beta.get(f"/Patient/{pid}/_history").status_code == 404
    for query in ({"family": "Lonely"}, {"_id": pid}, {"identifier": f"{SSN}|123-45-6789"}):
        assert beta.get("/Patient", params=query).json()["total"] == 0
    assert beta.post("/Patient/_search", data={"family": "Lonely"}).json()["total"] == 0
    assert beta.get("/", params={"_type": "Patient,Observation"}).json().get("entry") is None
    assert beta.get(f"/Patient/{pid}/*").json().get("entry") is None
    assert entries(beta.get("/Patient/_history")) == 0
    assert entries(beta.get("/_history")) == 0

    searched = alpha.get("/Patient", params={"family": "Lonely"}).json()
    assert ids(searched) == [pid]
    assert searched["entry"][0]["fullUrl"] == f"{tenancy.url('alpha')}/Patient/{pid}"
    assert searched["link"][0]["url"].startswith(f"{tenancy.url('alpha')}/Patient?")
    assert entries(alpha.get("/_history")) == 2


def test_includes_do_not_reach_into_another_tenant(http: dict[str, httpx.Client]) -> None:
    alpha, beta = http["alpha"], http["beta"]
    pid = alpha.post("/Patient", json=patient("Included", "9")).json()["id"]
    # beta's Observation names alpha's patient id: its reference must resolve in beta only (where it dangles).
    beta_obs = beta.post("/Observation", json=observation(f"Patient/{pid}")).json()["id"]
    alpha_obs = alpha.post("/Observation", json=observation(f"Patient/{pid}")).json()["id"]

    included = beta.get("/Observation", params={"_include": "Observation:subject"}).json()
    assert ids(included) == [beta_obs]
    revincluded = alpha.get("/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}).json()
    assert sorted(ids(revincluded)) == sorted([pid, alpha_obs])
    assert beta.get("/Patient", params={"_has:Observation:subject:status": "final"}).json()["total"] == 0
    assert beta.get("/Observation", params={"subject.family": "Included"}).json()["total"] == 0


def test_writes_and_conditional_writes_stay_in_their_tenant(http: dict[str, httpx.Client]) -> None:
    alpha, beta = http["alpha"], http["beta"]
    pid = alpha.post("/Patient", json=patient("Kept", "555")).json()["id"]
    condition = {"If-None-Exist": f"identifier={SSN}|555"}

    # Conditional create in beta does not see alpha's match: it creates.
    made = beta.post("/Patient", json=patient("BetaKept", "555"), headers=condition)
    assert made.status_code == 201 and made.json()["id"] != pid
    # Conditional update in beta updates beta's match only.
    updated = beta.put("/Patient", params={"identifier": f"{SSN}|555"}, json=patient("BetaUpdated", "555"))
    assert updated.status_code == 200 and updated.json()["id"] == made.json()["id"]
    # Update and delete by alpha's id in beta: an update creates beta's own resource; a delete finds nothing.
    assert beta.delete(f"/Patient/{pid}").status_code in (200, 204)
    assert beta.patch(f"/Patient/{pid}", content=b'[{"op":"replace","path":"/gender","value":"male"}]',
                      headers={"Content-Type": "application/json-patch+json"}).status_code == 404
    assert beta.delete("/Patient", params={"identifier": f"{SSN}|555"}).status_code in (200, 204)
    assert beta.get("/Patient", params={"identifier": f"{SSN}|555"}).json()["total"] == 0

    kept = alpha.get(f"/Patient/{pid}")
    assert kept.status_code == 200 and kept.json()["name"][0]["family"] == "Kept"
    assert kept.json()["meta"]["versionId"] == "1" and kept.json()["gender"] == "female"


def test_bundles_stay_in_their_tenant(http: dict[str, httpx.Client], tenancy) -> None:
    alpha, beta = http["alpha"], http["beta"]
    pid = alpha.post("/Patient", json=patient("Bundled", "777")).json()["id"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": f"Patient?_id={pid}"}},
        {"request": {"method": "GET", "url": f"{tenancy.url('alpha')}/Patient/{pid}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
    ]}
    answered = beta.post("/", json=batch).json()["entry"]
    assert answered[0]["response"]["status"].startswith("404")
    assert answered[1]["resource"]["total"] == 0
    assert answered[2]["response"]["status"].startswith("4")  # another tenant's base is not this one
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c5e7a4e-0000-4000-8000-000000000001", "resource": patient("Tx", "777"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SSN}|777"}},
        {"resource": observation("urn:uuid:0c5e7a4e-0000-4000-8000-000000000001"),
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    done = beta.post("/", json=transaction)
    assert done.status_code == 200, done.text
    statuses = [entry["response"]["status"] for entry in done.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("201")
    assert done.json()["entry"][0]["response"]["location"].startswith(f"{tenancy.url('beta')}/Patient/")
    assert alpha.get(f"/Patient/{pid}").status_code == 200
    assert alpha.get("/Observation").json()["total"] == 0


def test_operations_stay_in_their_tenant(http: dict[str, httpx.Client]) -> None:
    alpha, beta = http["alpha"], http["beta"]
    pid = alpha.post("/Patient", json=patient("Operated", "888-77-6666")).json()["id"]
    alpha.post("/Observation", json=observation(f"Patient/{pid}"))

    assert len(ids(alpha.get(f"/Patient/{pid}/$everything").json())) == 2
    assert beta.get(f"/Patient/{pid}/$everything").status_code == 404
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "resource",
                                                               "resource": patient("Operated", "888-77-6666")}]}
    assert ids(alpha.post("/Patient/$match", json=parameters).json()) == [pid]
    assert ids(beta.post("/Patient/$match", json=parameters).json()) == []
    merge = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{pid}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{pid}"}}]}
    assert beta.post("/Patient/$merge", json=merge).status_code in (404, 422)
    assert alpha.get(f"/Patient/{pid}").status_code == 200


def test_documents_stay_in_their_tenant(http: dict[str, httpx.Client], tenancy) -> None:
    alpha, beta = http["alpha"], http["beta"]
    data = b"%PDF-1.4 the same bytes in two tenants"
    headers = {"Content-Type": "application/pdf"}
    alpha_binary = alpha.post("/Binary", content=data, headers=headers)
    beta_binary = beta.post("/Binary", content=data, headers=headers)
    assert alpha_binary.status_code == 201 and beta_binary.status_code == 201, alpha_binary.text
    alpha_id = alpha_binary.headers["location"].split("/Binary/")[1].split("/")[0]
    assert alpha.get(f"/Binary/{alpha_id}", headers={"Accept": "application/pdf"}).content == data
    assert beta.get(f"/Binary/{alpha_id}", headers={"Accept": "application/pdf"}).status_code == 404
    # Identical bytes are stored once per tenant, each in its own area of the store.
    stored = sorted(path.relative_to(tenancy.document_dir).parts[0]
                    for path in tenancy.document_dir.rglob("*") if path.is_file())
    assert stored == sorted(tenancy.schemas.values())


def test_custom_search_parameters_are_per_tenant(http: dict[str, httpx.Client]) -> None:
    alpha, beta = http["alpha"], http["beta"]
    parameter = {
        "resourceType": "SearchParameter", "id": "eye-color", "url": "http://example.org/SearchParameter/eye-color",
        "name": "eye-color", "status": "active", "description": "Eye color", "code": "eye-color",
        "base": ["Patient"], "type": "token",
        "expression": "Patient.extension.where(url = 'http://example.org/eye-color').value",
    }
    colored = {"resourceType": "Patient", "extension": [{"url": "http://example.org/eye-color", "valueCode": "teal"}]}
    assert alpha.put("/SearchParameter/eye-color", json=parameter).status_code == 201
    assert alpha.post("/Patient/$reindex").status_code == 200
    pid = alpha.post("/Patient", json=colored).json()["id"]
    beta.post("/Patient", json=colored)
    strict = {"Prefer": "handling=strict"}
    assert ids(alpha.get("/Patient", params={"eye-color": "teal"}, headers=strict).json()) == [pid]
    assert beta.get("/Patient", params={"eye-color": "teal"}, headers=strict).status_code == 400
    alpha.put("/SearchParameter/eye-color", json={**parameter, "status": "retired"})
    assert alpha.post("/$reindex").status_code == 200
    assert alpha.get("/Patient", params={"eye-color": "teal"}, headers=strict).status_code == 400


def test_paging_links_stay_below_the_tenant(http: dict[str, httpx.Client], tenancy) -> None:
    alpha, beta = http["alpha"], http["beta"]
    created = {alpha.post("/Patient", json=patient("Paged", str(i))).json()["id"] for i in range(3)}
    first = alpha.get("/Patient", params={"family": "Paged", "_count": 1}).json()
    [next_url] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert next_url.startswith(f"{tenancy.url('alpha')}/Patient?")
    second = alpha.get(next_url).json()
    assert len(ids(second)) == 1 and set(ids(first) + ids(second)) < created
    # The same position at beta pages through beta's data only.
    elsewhere = beta.get(next_url.replace(tenancy.url("alpha"), tenancy.url("beta")))
    assert elsewhere.status_code in (200, 400) and not set(ids(elsewhere.json())) & created
    history = alpha.get("/Patient/_history", params={"_count": 1}).json()
    assert all(link["url"].startswith(tenancy.url("alpha")) for link in history["link"])
