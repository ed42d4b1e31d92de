"""The R4 Task state machine and the rules of workflows: a Task cannot start before the Tasks it depends on
(`basedOn`) are finished, nor complete while its subtasks (`partOf` it) are unfinished."""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import FHIRError

# From the R4 Task state machine (http://hl7.org/fhir/R4/task.html#statemachine); entered-in-error is
# reachable from every status, since it corrects a mistake rather than moving the work on.
TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"requested", "cancelled"}),
    "requested": frozenset({"received", "accepted", "rejected", "ready", "in-progress", "on-hold", "cancelled"}),
    "received": frozenset({"accepted", "rejected", "ready", "in-progress", "on-hold", "cancelled"}),
    "accepted": frozenset({"ready", "in-progress", "on-hold", "cancelled"}),
    "ready": frozenset({"in-progress", "on-hold", "cancelled", "failed"}),
    "in-progress": frozenset({"completed", "on-hold", "failed", "cancelled"}),
    "on-hold": frozenset({"requested", "received", "accepted", "ready", "in-progress", "cancelled", "failed"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "failed": frozenset(),
    "rejected": frozenset(),
    "entered-in-error": frozenset(),
}
ACTIVE = frozenset({"requested", "received", "accepted", "ready", "in-progress", "on-hold"})
"""Work still to be done (a due date can pass)."""
FINISHED = frozenset({"completed", "entered-in-error"})
"""A dependency in these statuses no longer holds anything up; any other (failed, cancelled...) still does."""


def check_transition(previous: str | None, status: str | None) -> None:
    """422 naming the allowed statuses unless `previous` -> `status` is a move the state machine allows."""
    if previous is None or status is None or previous == status or status == "entered-in-error":
        return
    allowed = TRANSITIONS.get(previous, frozenset())
    if status not in allowed:
        options = ", ".join(sorted(allowed | {"entered-in-error"})) if previous != "entered-in-error" else "none"
        raise FHIRError.of(422, "business-rule", f"A Task cannot move from '{previous}' to '{status}'; "
                                                 f"from '{previous}' it may move to: {options}", "Task.status")


def _task_ids(references: Any) -> list[str]:
    ids = []
    for reference in references or []:
        value = reference.get("reference") if isinstance(reference, dict) else None
        if isinstance(value, str) and value.startswith("Task/") and "/" not in value[5:]:
            ids.append(value[5:])
    return list(dict.fromkeys(ids))


async def _statuses(conn: AsyncConnection, sql: str, argument: Any) -> list[tuple[str, str | None]]:
    rows = await (await conn.execute(sql, (argument,))).fetchall()
    return sorted(rows, key=lambda row: row[0])


# The Task's own status row: a contained resource's rows share its resource_id (under type `#Type`).
_STATUS = ("LEFT JOIN search_token s ON s.resource_id = r.id AND s.resource_type = r.resource_type "
           "AND s.param = 'status'")


async def unfinished_dependencies(conn: AsyncConnection, task: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(id, status) of the Tasks in `basedOn` that are not finished; a missing one counts as unfinished."""
    ids = _task_ids(task.get("basedOn"))
    if not ids:
        return []
    found = dict(await _statuses(conn, "SELECT r.fhir_id, s.code FROM resource r " + _STATUS +
                                 " WHERE r.resource_type = 'Task' AND r.fhir_id = ANY(%s) AND NOT r.deleted", ids))
    return [(fhir_id, found.get(fhir_id)) for fhir_id in ids if found.get(fhir_id) not in FINISHED]


async def unfinished_subtasks(conn: AsyncConnection, fhir_id: str) -> list[tuple[str, str | None]]:
    return [row for row in await _statuses(
        conn, "SELECT r.fhir_id, s.code FROM search_reference p JOIN resource r ON r.id = p.resource_id " + _STATUS +
              " WHERE p.resource_type = 'Task' AND p.param = 'part-of' AND p.target_type = 'Task' "
              "AND p.target_id = %s AND NOT r.deleted", fhir_id)
            if row[1] not in FINISHED and row[1] not in ("cancelled", "rejected", "failed")]


def _listed(rows: list[tuple[str, str | None]]) -> str:
    return ", ".join(f"Task/{fhir_id} ({status or 'missing'})" for fhir_id, status in rows)


async def check_task(conn: AsyncConnection, task: dict[str, Any], fhir_id: str | None,
                     previous: dict[str, Any] | None) -> None:
    """All rules for writing `task` over `previous` (None when created)."""
    status = task.get("status")
    before = previous.get("status") if previous is not None else None
    check_transition(before, status)
    if status == "in-progress" and before != "in-progress":
        waiting = await unfinished_dependencies(conn, task)
        if waiting:
            raise FHIRError.of(422, "business-rule", "The Task cannot start while the Tasks it depends on are "
                                                     f"unfinished: {_listed(waiting)}", "Task.basedOn")
    if status == "completed" and before != "completed" and fhir_id is not None:
        open_subtasks = await unfinished_subtasks(conn, fhir_id)
        if open_subtasks:
            raise FHIRError.of(422, "business-rule", "The Task cannot complete while its subtasks are "
                                                     f"unfinished: {_listed(open_subtasks)}", "Task.status")
