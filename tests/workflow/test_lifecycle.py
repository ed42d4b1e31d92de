"""The R4 Task state machine, dependencies (basedOn) and subtasks (partOf), over HTTP."""

import pytest

from tests.workflow.helpers import diagnostics, task


def _create(client, **fields) -> dict:
    response = client.post("/Task", json=task(**fields))
    assert response.status_code == 201, response.text
    return response.json()


def _put(client, resource: dict, status: str, **fields):
    return client.put(f"/Task/{resource['id']}", json={**resource, "status": status, **fields})


def test_the_main_path_is_allowed(client) -> None:
    current = _create(client, status="draft")
    for status in ("requested", "received", "accepted", "in-progress", "completed"):
        response = _put(client, current, status)
        assert response.status_code == 200, response.text
        current = response.json()


@pytest.mark.parametrize(("start", "to"), [("draft", "completed"), ("requested", "completed"),
                                           ("completed", "in-progress"), ("cancelled", "requested")])
def test_an_invalid_transition_is_422_naming_the_allowed_ones(client, start, to) -> None:
    created = _create(client, status=start)
    response = _put(client, created, to)
    assert response.status_code == 422
    text = diagnostics(response)
    assert f"from '{start}' to '{to}'" in text
    if start == "draft":
        assert "cancelled, entered-in-error, requested" in text


def test_patch_is_checked_too_and_entered_in_error_is_always_allowed(client) -> None:
    created = _create(client, status="completed")
    headers = {"Content-Type": "application/json-patch+json"}
    refused = client.patch(f"/Task/{created['id']}", headers=headers,
                           content=b'[{"op": "replace", "path": "/status", "value": "requested"}]')
    assert refused.status_code == 422 and "may move to: entered-in-error" in diagnostics(refused)
    allowed = client.patch(f"/Task/{created['id']}", headers=headers,
                           content=b'[{"op": "replace", "path": "/status", "value": "entered-in-error"}]')
    assert allowed.status_code == 200


def test_a_task_cannot_start_before_its_dependencies_finish(client) -> None:
    first = _create(client, status="in-progress")
    second = _create(client, status="accepted")
    dependent = _create(client, status="accepted",
                        basedOn=[{"reference": f"Task/{first['id']}"}, {"reference": f"Task/{second['id']}"}])
    refused = _put(client, dependent, "in-progress")
    assert refused.status_code == 422
    assert f"Task/{first['id']} (in-progress)" in diagnostics(refused)
    assert f"Task/{second['id']} (accepted)" in diagnostics(refused)
    assert _put(client, first, "completed").status_code == 200
    _put(client, second, "in-progress")
    assert _put(client, client.get(f"/Task/{second['id']}").json(), "completed").status_code == 200
    assert _put(client, dependent, "in-progress").status_code == 200


def test_a_new_task_cannot_be_created_in_progress_with_unfinished_dependencies(client) -> None:
    first = _create(client)
    response = client.post("/Task", json=task("in-progress", basedOn=[{"reference": f"Task/{first['id']}"}]))
    assert response.status_code == 422


def test_a_parent_cannot_complete_while_subtasks_are_open(client) -> None:
    parent = _create(client, status="in-progress")
    child = _create(client, status="in-progress", partOf=[{"reference": f"Task/{parent['id']}"}])
    refused = _put(client, parent, "completed")
    assert refused.status_code == 422 and f"Task/{child['id']}" in diagnostics(refused)
    assert _put(client, child, "completed").status_code == 200
    assert _put(client, parent, "completed").status_code == 200
    subtasks = client.get("/Task", params={"part-of": f"Task/{parent['id']}"}).json()
    assert [entry["resource"]["id"] for entry in subtasks["entry"]] == [child["id"]]
