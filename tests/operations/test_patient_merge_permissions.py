"""Patient/$merge and $unmerge under SMART scopes: write access to both patients and to every resource the
merge rewrites (a preview needs read access only); patient/ scopes never merge."""

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from tests.auth.test_enforcement import bearer, patient_token, system_token, user_token


@pytest.fixture
async def smart(configured_client) -> AsyncIterator[httpx.AsyncClient]:
    async with configured_client(FHIR_AUTH="smart") as client:
        yield client


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


def ref(patient_id: str) -> dict:
    return {"reference": f"Patient/{patient_id}"}


async def created(http: httpx.AsyncClient, headers: dict, body: dict) -> str:
    response = await http.post(f"/{body['resourceType']}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
async def pair(smart: httpx.AsyncClient, aconn: psycopg.AsyncConnection) -> dict[str, str]:
    """A source referenced by a vital-signs Observation, a laboratory Observation and a Task; a target."""
    admin = bearer(await system_token(aconn, smart, "system/*.cruds"))
    ids = {"source": await created(smart, admin, {"resourceType": "Patient", "name": [{"family": "Doe"}]}),
           "target": await created(smart, admin, {"resourceType": "Patient", "name": [{"family": "Doe"}]})}
    for category in ("vital-signs", "laboratory"):
        ids[category] = await created(smart, admin, {
            "resourceType": "Observation", "status": "final", "code": {"text": category}, "subject": ref(ids["source"]),
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}]})
    ids["task"] = await created(smart, admin, {"resourceType": "Task", "status": "requested", "intent": "order",
                                               "for": ref(ids["source"])})
    return ids


async def merge(http: httpx.AsyncClient, token: str, ids: dict[str, str], preview: bool = False) -> httpx.Response:
    parameters = [{"name": "source-patient", "valueReference": ref(ids["source"])},
                  {"name": "target-patient", "valueReference": ref(ids["target"])}]
    if preview:
        parameters.append({"name": "preview", "valueBoolean": True})
    return await http.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": parameters},
                           headers=bearer(token))


def versions(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM resource_version").fetchone()[0]


async def test_merge_needs_write_access_to_every_rewritten_type(smart: httpx.AsyncClient, db, pair: dict,
                                                                 aconn: psycopg.AsyncConnection) -> None:
    before = versions(db)
    no_observations = await user_token(aconn, smart, "user/Patient.* user/Task.write")
    refused = await merge(smart, no_observations, pair)
    assert refused.status_code == 403, refused.text
    [issue] = refused.json()["issue"]
    assert issue["code"] == "forbidden" and issue["expression"] == ["Observation"]
    assert "'u' on Observation, which the operation would rewrite (2 resource(s))" in issue["diagnostics"]
    assert versions(db) == before

    no_patient_write = await system_token(aconn, smart, "system/Patient.rs system/Observation.u system/Task.u")
    refused = await merge(smart, no_patient_write, pair)
    assert refused.status_code == 403 and "'u' on Patient" in refused.text
    assert versions(db) == before

    writer = await user_token(aconn, smart, "user/Patient.* user/Observation.write user/Task.write")
    merged = await merge(smart, writer, pair)
    assert merged.status_code == 200, merged.text
    assert db.execute("SELECT count(*) FROM patient_replaced").fetchone()[0] == 1


async def test_scope_filters_apply_to_each_rewritten_resource(smart: httpx.AsyncClient, db, pair: dict,
                                                              aconn: psycopg.AsyncConnection) -> None:
    before = versions(db)
    vitals_only = await system_token(aconn, smart, "system/Patient.ru system/Task.u "
                                                   "system/Observation.u?category=vital-signs")
    refused = await merge(smart, vitals_only, pair)
    assert refused.status_code == 403, refused.text
    assert [issue["expression"] for issue in refused.json()["issue"]] == [[f"Observation/{pair['laboratory']}"]]
    assert versions(db) == before
    both = await system_token(aconn, smart, "system/Patient.ru system/Task.u system/Observation.u?category=vital-signs "
                                            "system/Observation.u?category=laboratory")
    assert (await merge(smart, both, pair)).status_code == 403  # two filters mean OR: not combined, refused


async def test_preview_needs_read_access_only(smart: httpx.AsyncClient, db, pair: dict,
                                              aconn: psycopg.AsyncConnection) -> None:
    before = versions(db)
    reader = await system_token(aconn, smart, "system/Patient.r system/Observation.r system/Task.r")
    preview = await merge(smart, reader, pair, preview=True)
    assert preview.status_code == 200, preview.text
    assert "Observation: 2 resource(s)" in preview.text
    assert (await merge(smart, reader, pair)).status_code == 403
    blind = await system_token(aconn, smart, "system/Patient.r system/Task.r")
    refused = await merge(smart, blind, pair, preview=True)
    assert refused.status_code == 403 and "'r' on Observation, which the operation would read for the preview" \
        in refused.text
    assert versions(db) == before


async def test_patient_scopes_never_merge(smart: httpx.AsyncClient, db, pair: dict,
                                          aconn: psycopg.AsyncConnection) -> None:
    before = versions(db)
    token = await patient_token(aconn, smart, pair["source"], "patient/*.cruds")
    for preview in (False, True):
        refused = await merge(smart, token, pair, preview)
        assert refused.status_code == 403, refused.text
        assert "user/ or system/ scopes" in refused.text
    assert versions(db) == before


async def test_unmerge_needs_write_access_to_what_it_restores(smart: httpx.AsyncClient, db, pair: dict,
                                                              aconn: psycopg.AsyncConnection) -> None:
    writer = await system_token(aconn, smart, "system/Patient.ru system/Observation.u system/Task.u")
    assert (await merge(smart, writer, pair)).status_code == 200
    before = versions(db)
    undo = {"resourceType": "Parameters", "parameter": [{"name": "source-patient",
                                                          "valueReference": ref(pair["source"])}]}
    partial = await system_token(aconn, smart, "system/Patient.ru system/Task.u")
    refused = await smart.post("/Patient/$unmerge", json=undo, headers=bearer(partial))
    assert refused.status_code == 403 and "'u' on Observation, which the operation would restore" in refused.text
    assert versions(db) == before
    undone = await smart.post("/Patient/$unmerge", json=undo, headers=bearer(writer))
    assert undone.status_code == 200, undone.text
