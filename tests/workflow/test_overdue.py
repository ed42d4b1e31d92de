"""Overdue Tasks: the worker tags active Tasks whose due date (restriction.period.end) passed."""

from datetime import datetime, timedelta, timezone

from fhir_server.workflow.codes import OVERDUE, TASK_FLAG
from tests.messaging.helpers import eventually, read
from tests.workflow.helpers import task


def _due(seconds: float) -> dict:
    end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return {"period": {"end": end.isoformat(timespec="milliseconds")}}


def _overdue(resource: dict) -> bool:
    return any(tag == {"system": TASK_FLAG, "code": OVERDUE} for tag in resource.get("meta", {}).get("tag", []))


async def test_worker_flags_overdue_tasks_and_search_finds_them(background_app, db) -> None:
    async with background_app() as (_, client):
        late = (await client.post("/fhir/Task", json=task("in-progress", restriction=_due(0.5)))).json()
        done = (await client.post("/fhir/Task", json=task("in-progress", restriction=_due(0.5)))).json()
        later = (await client.post("/fhir/Task", json=task("requested", restriction=_due(3600)))).json()
        assert (await client.put(f"/fhir/Task/{done['id']}", json={**done, "status": "completed"})).status_code == 200
        await eventually(lambda: _overdue(read(db, "Task", late["id"])))
        found = (await client.get("/fhir/Task", params={"status": "requested,in-progress",
                                                        "_tag": f"{TASK_FLAG}|{OVERDUE}"})).json()
        assert [entry["resource"]["id"] for entry in found["entry"]] == [late["id"]]
        assert not _overdue(read(db, "Task", done["id"])) and not _overdue(read(db, "Task", later["id"]))
        assert db.execute("SELECT state FROM outbox WHERE fhir_id = %s", (done["id"],)).fetchall() == [("cancelled",)]

        # A later due date drops the flag; when that date passes, the Task is flagged again.
        flagged = read(db, "Task", late["id"])
        moved = await client.put(f"/fhir/Task/{late['id']}", json={**flagged, "restriction": _due(0.5)})
        assert moved.status_code == 200 and not _overdue(moved.json())
        await eventually(lambda: _overdue(read(db, "Task", late["id"])))


async def test_overdue_work_survives_a_restart(background_app, db) -> None:
    async with background_app() as (_, client):
        created = (await client.post("/fhir/Task", json=task("requested", restriction=_due(1)))).json()
    assert db.execute("SELECT state FROM outbox WHERE fhir_id = %s", (created["id"],)).fetchall() == [("pending",)]
    async with background_app():
        await eventually(lambda: _overdue(read(db, "Task", created["id"])))


def _ids(client, resource_type: str, **params: str) -> list[str]:
    response = client.get(f"/{resource_type}", params=params)
    assert response.status_code == 200, response.text
    return sorted(entry["resource"]["id"] for entry in response.json().get("entry", []))


def test_due_work_by_standard_search(client) -> None:
    """R4's `period` is Task.executionPeriod (when the work was done); the due date (restriction.period.end)
    is the server's own `due` parameter (resources/search-parameters-local.json), there from the start."""
    started = client.post("/Task", json=task("in-progress", executionPeriod={"start": "2026-01-05T09:00:00Z"},
                                             restriction={"period": {"end": "2026-01-10T00:00:00Z"}})).json()["id"]
    later = client.post("/Task", json=task("requested", restriction={"period": {"end": "2030-01-01"}})).json()["id"]
    done = client.post("/Task", json=task("completed", restriction={"period": {"end": "2026-01-01"}})).json()["id"]
    client.post("/Task", json=task("requested"))  # no due date: never found by one

    assert _ids(client, "Task", status="requested,in-progress", period="lt2026-02-01") == [started]
    assert _ids(client, "Task", status="requested,in-progress", due="le2026-12-01") == [started]
    assert _ids(client, "Task", due="le2026-12-01") == sorted([started, done])
    assert _ids(client, "Task", due="gt2026-12-01") == [later]
    assert _ids(client, "Task", due="2026-01-10") == [started]
    sorted_by_due = client.get("/Task", params={"due:missing": "false", "_sort": "-due"}).json()
    assert [entry["resource"]["id"] for entry in sorted_by_due["entry"]] == [later, started, done]
    statement = client.get("/metadata").json()
    [task_resource] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Task"]
    assert {"name": "due", "definition": "urn:fhir-server:SearchParameter/Task-due", "type": "date"} in [
        {key: p[key] for key in ("name", "definition", "type")} for p in task_resource["searchParam"]]


def test_communication_requests_by_occurrence(client) -> None:
    def request(when: str) -> str:
        return client.post("/CommunicationRequest", json={
            "resourceType": "CommunicationRequest", "status": "draft", "occurrenceDateTime": when}).json()["id"]

    soon, late = request("2026-11-30T09:00:00Z"), request("2027-03-01")
    assert _ids(client, "CommunicationRequest", occurrence="le2026-12-01") == [soon]
    assert _ids(client, "CommunicationRequest", occurrence="ge2026-12-01") == [late]
