"""Patient/$merge above FHIR_MERGE_SYNC_LIMIT or with Prefer: respond-async: the Task, its batches, redelivery,
failure; and writes racing a merge, synchronous or not."""

import asyncio
import time

import orjson
import psycopg
import pytest

from fhir_server.operations import patient_merge_job
from fhir_server.settings import Settings
from fhir_server.validation import validate_resource
from tests.messaging.helpers import eventually, read
from tests.operations.test_patient_merge import SCORE, precise


def ref(patient_id: str) -> dict:
    return {"reference": f"Patient/{patient_id}"}


def observation(patient_id: str, index: int = 0) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": f"weight {index}"},
            "subject": ref(patient_id), "performer": [ref(patient_id)]}


async def created(client, body: dict) -> str:
    response = await client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def pair_with_referrers(client, count: int) -> tuple[str, str, list[str]]:
    """A source with `count` Observations referencing it (one transaction), and a target."""
    source = await created(client, {"resourceType": "Patient", "name": [{"family": "Doe"}],
                                    "identifier": [{"system": "urn:ssn", "value": "42"}]})
    target = await created(client, {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["J"]}]})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(source, index), "request": {"method": "POST", "url": "Observation"}}
        for index in range(count)]}
    response = await client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    ids = [entry["response"]["location"].split("Observation/")[1].split("/")[0] for entry in response.json()["entry"]]
    return source, target, ids


async def merge(client, source: str, target: str, **headers: str):
    parameters = [{"name": "source-patient", "valueReference": ref(source)},
                  {"name": "target-patient", "valueReference": ref(target)}]
    return await client.post("/Patient/$merge", json={"resourceType": "Parameters", "parameter": parameters},
                             headers=headers)


def task_id_of(response) -> str:
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == response.headers["Content-Location"]
    task_id = response.headers["Location"].rsplit("/Task/", 1)[1]
    task = next(part["resource"] for part in response.json()["parameter"] if part["name"] == "task")
    assert task["id"] == task_id and task["status"] == "requested"
    return task_id


def contained_outcome(task: dict) -> dict:
    assert task["output"][0]["valueReference"]["reference"] == "#outcome"
    return next(resource for resource in task["contained"] if resource["id"] == "outcome")


def references_to(db, patient_id: str) -> int:
    """Current resources (other than merge and audit records) whose index still points at Patient/`patient_id`."""
    return db.execute(
        "SELECT count(*) FROM resource r WHERE NOT r.deleted "
        "AND r.resource_type NOT IN ('Provenance', 'AuditEvent', 'Patient') "
        "AND r.id NOT IN (SELECT task FROM patient_merge_job) AND r.id IN (SELECT resource_id FROM search_reference "
        "WHERE target_type = 'Patient' AND target_id = %s)", (patient_id,)).fetchone()[0]


async def test_limit_decides_sync_or_async_and_source_is_closed_at_once(configured_client, db) -> None:
    async with configured_client(FHIR_MERGE_SYNC_LIMIT="10",
                                 FHIR_ENFORCE_REFERENTIAL_INTEGRITY_ON_DELETE="false") as client:
        source, target, _ = await pair_with_referrers(client, 10)
        assert (await merge(client, source, target)).status_code == 200  # at the limit: synchronous

        source, target, _ = await pair_with_referrers(client, 11)
        task_id = task_id_of(await merge(client, source, target))
        task = (await client.get(f"/Task/{task_id}")).json()
        assert task["status"] == "requested" and task["businessStatus"]["text"] == \
            "rewritten 0 of 11 referencing resources"
        assert [(part["type"]["text"], part["valueReference"]) for part in task["input"]] == \
            [("source-patient", ref(source)), ("target-patient", ref(target))]
        assert validate_resource(task, "Task") == []
        # No worker runs here: the merge is only accepted, and the source already takes no new references.
        refused = await client.post("/Observation", json=observation(source))
        assert refused.status_code == 422 and f"Patient/{target}" in refused.text
        # While it runs, neither patient can be merged, unmerged or deleted: 409, saying which Task runs.
        third = await created(client, {"resourceType": "Patient", "name": [{"family": "Third"}]})
        refusals = [await merge(client, source, target), await merge(client, target, third),
                    await merge(client, third, source), await merge(client, third, target),
                    await client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
                        {"name": "source-patient", "valueReference": ref(source)}]}),
                    await client.delete(f"/Patient/{target}"), await client.delete(f"/Patient/{source}"),
                    await client.delete(f"/Task/{task_id}"),
                    await client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
                        {"request": {"method": "DELETE", "url": f"Patient/{target}"}}]})]
        for refused in refusals:
            assert refused.status_code == 409, refused.text
            assert "merge" in refused.text and "in progress" in refused.text and f"Task/{task_id}" in refused.text
    assert not read(db, "Patient", target).get("link") and read(db, "Patient", third)["meta"]["versionId"] == "1"
    [(state, topic)] = db.execute("SELECT state, topic FROM outbox").fetchall()
    assert (state, topic) == ("pending", "patient-merge")


async def test_prefer_respond_async_completes_with_output(background_app, db) -> None:
    async with background_app() as (_, client):
        client.base_url = "http://test/fhir"
        source, target, observations = await pair_with_referrers(client, 3)
        task_id = task_id_of(await merge(client, source, target, Prefer="respond-async"))
        await eventually(lambda: read(db, "Task", task_id)["status"] == "completed", seconds=20)
        task = (await client.get(f"/Task/{task_id}")).json()
        assert validate_resource(task, "Task") == []
        assert task["businessStatus"]["text"] == "rewritten 3 of 3 referencing resources"
        outcome = contained_outcome(task)
        assert "Observation: 3 resource(s)" in str(outcome) and "3 resource(s) and 6 reference(s)" in str(outcome)
        outputs = {part["type"]["text"]: part["valueReference"]["reference"] for part in task["output"]}
        merged_target = (await client.get(f"/Patient/{target}")).json()
        assert outputs["result"] == f"Patient/{target}/_history/{merged_target['meta']['versionId']}"
        assert {"other": ref(source), "type": "replaces"} in merged_target["link"]
        assert {"system": "urn:ssn", "value": "42", "use": "old"} in merged_target["identifier"]
        merged_source = (await client.get(f"/Patient/{source}")).json()
        assert merged_source["active"] is False and merged_source["link"] == [{"other": ref(target),
                                                                                "type": "replaced-by"}]
        provenance = (await client.get(f"/{outputs['provenance']}")).json()
        assert len(provenance["target"]) == 5  # three Observations and both patients
        for observation_id in observations:
            assert (await client.get(f"/Observation/{observation_id}")).json()["subject"] == ref(target)
        # Undo works on an asynchronous merge as on any other.
        undo = await client.post("/Patient/$unmerge", json={"resourceType": "Parameters", "parameter": [
            {"name": "provenance", "valueReference": {"reference": outputs["provenance"]}}]})
        assert undo.status_code == 200, undo.text
        assert (await client.get(f"/Observation/{observations[0]}")).json()["subject"] == ref(source)


async def test_fifty_referrers_in_batches_of_ten(background_app, db) -> None:
    async with background_app(FHIR_MERGE_SYNC_LIMIT="10") as (_, client):
        client.base_url = "http://test/fhir"
        source, target, observations = await pair_with_referrers(client, 50)
        task_id = task_id_of(await merge(client, source, target))
        await eventually(lambda: read(db, "Task", task_id)["status"] == "completed", seconds=30)
        history = (await client.get(f"/Task/{task_id}/_history", params={"_count": "100"})).json()
    progress = sorted((int(entry["resource"]["meta"]["versionId"]), entry["resource"]["status"],
                       entry["resource"]["businessStatus"]["text"]) for entry in history["entry"])
    assert [(status, text.split(" referencing")[0]) for _, status, text in progress] == [
        ("requested", "rewritten 0 of 50"), ("in-progress", "rewritten 10 of 50"),
        ("in-progress", "rewritten 20 of 50"), ("in-progress", "rewritten 30 of 50"),
        ("in-progress", "rewritten 40 of 50"), ("completed", "rewritten 50 of 50")]
    assert references_to(db, source) == 0
    versions = db.execute("SELECT version_id, count(*) FROM resource WHERE resource_type = 'Observation' "
                          "AND fhir_id = ANY(%s) GROUP BY 1", (observations,)).fetchall()
    assert versions == [(2, 50)]  # each rewritten exactly once
    assert db.execute("SELECT count(*) FROM resource WHERE resource_type = 'Provenance'").fetchone()[0] == 1
    assert db.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall() == [("done", 5)]


async def test_redelivered_and_interrupted_batches_apply_once(configured_client, database_url, db) -> None:
    async with configured_client(FHIR_MERGE_SYNC_LIMIT="10") as client:
        source, target, observations = await pair_with_referrers(client, 25)
        task_id = task_id_of(await merge(client, source, target))
    settings = Settings(database_url=database_url, merge_sync_limit=10)

    async def deliver(outbox_id: int, commit: bool = True) -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await patient_merge_job.step(conn, settings, outbox_id)
            await (conn.commit() if commit else conn.rollback())

    def done() -> int:
        return db.execute("SELECT done FROM patient_merge_job").fetchone()[0]

    await deliver(1, commit=False)  # a worker that died before its commit
    assert done() == 0 and references_to(db, source) == 25
    await deliver(1)
    await deliver(1)  # the same message again, as after a lost acknowledgement
    assert done() == 10
    delivered = {1}
    while live := db.execute("SELECT id FROM outbox WHERE state <> 'done' ORDER BY id").fetchall():
        [(outbox_id,)] = live
        await deliver(outbox_id)
        for earlier in delivered:  # every message ever sent, delivered again
            await deliver(earlier)
        delivered.add(outbox_id)
    assert done() == 25 and read(db, "Task", task_id)["status"] == "completed"
    assert references_to(db, source) == 0
    versions = db.execute("SELECT version_id, count(*) FROM resource WHERE resource_type = 'Observation' "
                          "AND fhir_id = ANY(%s) GROUP BY 1", (observations,)).fetchall()
    assert versions == [(2, 25)]
    assert read(db, "Patient", source)["meta"]["versionId"] == "2"
    assert db.execute("SELECT count(*) FROM resource WHERE resource_type = 'Provenance'").fetchone()[0] == 1


async def test_referrers_deleted_while_the_merge_runs_are_passed_over(configured_client, database_url, db) -> None:
    async with configured_client(FHIR_MERGE_SYNC_LIMIT="3") as client:
        source, target, observations = await pair_with_referrers(client, 7)
        task_id = task_id_of(await merge(client, source, target))
        for gone in (observations[1], observations[5]):
            assert (await client.delete(f"/Observation/{gone}")).status_code == 204
    settings = Settings(database_url=database_url, merge_sync_limit=3)
    while live := db.execute("SELECT id FROM outbox WHERE state <> 'done'").fetchall():
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await patient_merge_job.step(conn, settings, live[0][0])
            await conn.commit()
    task = read(db, "Task", task_id)
    assert task["status"] == "completed" and "Observation: 5 resource(s)" in str(task["contained"])
    assert references_to(db, source) == 0 and references_to(db, target) == 5


def nth_observation(db, index: int) -> str:
    """The id of the Observation at `index` in row order, the order a merge's list takes."""
    return db.execute("SELECT fhir_id FROM resource WHERE resource_type = 'Observation' ORDER BY id "
                      "OFFSET %s LIMIT 1", (index,)).fetchone()[0]


def hold(blocker: psycopg.Connection, resource_type: str, fhir_id: str) -> None:
    """Lock the resource's row in `blocker`'s transaction, as a long-running transaction of a client would."""
    blocker.execute("SELECT 1 FROM resource WHERE resource_type = %s AND fhir_id = %s FOR UPDATE",
                    (resource_type, fhir_id))


async def test_a_merge_that_cannot_finish_is_undone(background_app, database_url, db) -> None:
    """The second batch meets a row another transaction holds past the lock timeout, twice: the merge gives
    up, and the first batch's rewrites are undone, so that the merge changes nothing."""
    async with background_app(FHIR_MERGE_SYNC_LIMIT="10", FHIR_MERGE_LOCK_TIMEOUT="0.3",
                              FHIR_MERGE_MAX_ATTEMPTS="2") as (_, client):
        client.base_url = "http://test/fhir"
        source, target, observations = await pair_with_referrers(client, 25)
        before = {fhir_id: (await client.get(f"/Observation/{fhir_id}")).json() for fhir_id in observations}
        first_batch = {nth_observation(db, index) for index in range(10)}
        with psycopg.connect(database_url) as blocker:
            hold(blocker, "Observation", nth_observation(db, 14))
            task_id = task_id_of(await merge(client, source, target))
            await eventually(lambda: read(db, "Task", task_id)["status"] == "failed", seconds=30)
        task = (await client.get(f"/Task/{task_id}")).json()
        history = (await client.get(f"/Task/{task_id}/_history")).json()
        assert validate_resource(task, "Task") == []
        issues = contained_outcome(task)["issue"]
        assert issues[0]["severity"] == "error" and issues[0]["code"] == "lock-error"
        assert "stayed locked by other transactions through 2 attempts" in issues[0]["diagnostics"]
        assert "10 of 25 referencing resource(s) had been rewritten" in issues[1]["diagnostics"]
        assert "put back in 10 of them" in issues[1]["diagnostics"]
        for fhir_id, original in before.items():
            now = (await client.get(f"/Observation/{fhir_id}")).json()
            assert now["meta"]["versionId"] == ("3" if fhir_id in first_batch else "1")
            assert {**now, "meta": None} == {**original, "meta": None}
        for patient in (source, target):
            assert (await client.get(f"/Patient/{patient}")).json()["meta"]["versionId"] == "1"
        # The source takes references, and merges, again.
        assert (await client.post("/Observation", json=observation(source))).status_code == 201
        provenances = {output["valueReference"]["reference"] for output in task["output"][1:]}
    statuses = sorted((int(entry["resource"]["meta"]["versionId"]), entry["resource"]["status"],
                       entry["resource"]["businessStatus"]["text"]) for entry in history["entry"])
    assert [status[1:] for status in statuses] == [
        ("requested", "rewritten 0 of 25 referencing resources"),
        ("in-progress", "rewritten 10 of 25 referencing resources"),
        ("in-progress", "failed; undoing: 10 of 25 referencing resources left to restore"),
        ("failed", "failed; undone")]
    records = {f"Provenance/{row[0]}": orjson.loads(row[1]) for row in db.execute(
        "SELECT fhir_id, content FROM resource WHERE resource_type = 'Provenance'").fetchall()}
    assert set(records) == provenances
    activities = sorted((record["activity"]["coding"][0]["code"], len(record["target"]))
                        for record in records.values())
    assert activities == [("merge", 10), ("unmerge", 10)]
    assert db.execute("SELECT count(*) FROM patient_replaced").fetchone()[0] == 0
    assert references_to(db, target) == 0
    assert db.execute("SELECT state, count(*) FROM outbox GROUP BY 1 ORDER BY 1").fetchall() == [
        ("dead", 1), ("done", 2)]


async def test_a_synchronous_merge_that_cannot_lock_changes_nothing(configured_client, database_url, db) -> None:
    async with configured_client(FHIR_MERGE_LOCK_TIMEOUT="0.3") as client:
        source, target, observations = await pair_with_referrers(client, 5)
        versions = db.execute("SELECT count(*) FROM resource_version").fetchone()[0]
        with psycopg.connect(database_url) as blocker:
            hold(blocker, "Observation", observations[3])
            response = await asyncio.wait_for(merge(client, source, target), 10)
        assert response.status_code == 409, response.text
        assert response.json()["issue"][0]["code"] == "lock-error"
        assert db.execute("SELECT count(*) FROM resource_version").fetchone()[0] == versions
        assert db.execute("SELECT count(*) FROM patient_replaced").fetchone()[0] == 0
        assert (await client.post("/Observation", json=observation(source))).status_code == 201
        assert (await merge(client, source, target)).status_code == 200


async def _wait_for_lock(db, query_part: str, seconds: float = 10) -> None:
    """Until some backend waits for a lock while running a statement that contains `query_part`."""
    deadline = time.monotonic() + seconds
    while not db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND query LIKE %s", (f"%{query_part}%",)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise AssertionError(f"no backend waited on a lock in '{query_part}' within {seconds}s")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("respond_async", [False, True])
async def test_write_racing_a_merge_is_refused_not_missed(configured_client, database_url, db,
                                                          respond_async: bool) -> None:
    """A create that references the source while the merge holds its list: it waits, then gets 422."""
    async with configured_client() as client:
        source, target, observations = await pair_with_referrers(client, 3)
        # The merge stops mid-way on a row held here: the synchronous one in its rewrite, after it fixed
        # its list; the asynchronous one (which locks no referrer) on the target, before it fixes its list.
        held = ("Patient", target) if respond_async else ("Observation", observations[1])
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT 1 FROM resource WHERE resource_type = %s AND fhir_id = %s FOR UPDATE", held)
            headers = {"Prefer": "respond-async"} if respond_async else {}
            merging = asyncio.create_task(merge(client, source, target, **headers))
            await _wait_for_lock(db, "FOR UPDATE")
            writing = asyncio.create_task(client.post("/Observation", json=observation(source, 99)))
            await _wait_for_lock(db, "pg_advisory_xact_lock_shared")
            blocker.rollback()
            merged, written = await asyncio.wait_for(asyncio.gather(merging, writing), 20)
    assert merged.status_code == (202 if respond_async else 200), merged.text
    assert written.status_code == 422 and f"Patient/{target}" in written.text
    if not respond_async:
        assert references_to(db, source) == 0


async def test_background_merge_keeps_written_decimals(background_app, db) -> None:
    """The result-patient waits in the job row (jsonb) and the referrers are rewritten by the worker: both keep
    `1.50` as written."""
    headers = {"Content-Type": "application/fhir+json"}
    async with background_app() as (_, client):
        client.base_url = "http://test/fhir"
        source, target, _ = await pair_with_referrers(client, 0)
        weight = await client.post("/Observation", headers=headers, content=precise(
            {**observation(source), "valueQuantity": {"value": 12345.0, "unit": "kg"}}, "1.50"))
        assert weight.status_code == 201, weight.text
        result_patient = {"resourceType": "Patient", "id": target, "extension": [{"url": SCORE,
                                                                                  "valueDecimal": 12345.0}],
                          "link": [{"other": ref(source), "type": "replaces"}]}
        parameters = {"resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": ref(source)},
            {"name": "target-patient", "valueReference": ref(target)},
            {"name": "result-patient", "resource": result_patient}]}
        task_id = task_id_of(await client.post("/Patient/$merge", content=precise(parameters, "2.50"),
                                               headers={**headers, "Prefer": "respond-async"}))
        await eventually(lambda: read(db, "Task", task_id)["status"] == "completed", seconds=20)
        moved = await client.get(f"/Observation/{weight.json()['id']}")
        assert moved.json()["subject"] == ref(target) and b'"value":1.50' in moved.content
        assert b'"valueDecimal":2.50' in (await client.get(f"/Patient/{target}")).content
