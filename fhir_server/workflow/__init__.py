"""Tasks and workflows (lifecycle, dependencies, overdue, recurrence, automation) and the write rules of
messaging resources (templates, template-based requests, threads).

`before_write` is the hook the write interactions call next to `identity.before_write`; `task_written` is
the Task's side-effect hook (worker/side_effects.py). Other resource types cost nothing here.
"""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.messaging import templates, threads
from fhir_server.storage import repository
from fhir_server.workflow import automation, lifecycle, overdue, recurrence


async def before_write(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str | None) -> None:
    """422 for a write the workflow rules refuse; fill what the server maintains.

    `fhir_id` is None for a create; for an update it is the id being written (which may not exist yet).
    """
    resource_type = resource.get("resourceType")
    if resource_type == "Task":
        stored = await repository.read(conn, "Task", fhir_id, for_update=True) if fhir_id else None
        previous = stored.json() if stored is not None and not stored.deleted else None
        await lifecycle.check_task(conn, resource, fhir_id, previous)
        recurrence.recurrence(resource)
        overdue.clear_stale_flag(resource)
    elif resource_type == "CommunicationRequest":
        await templates.check_request(conn, resource)
    elif resource_type == "Basic" and templates.is_template(resource):
        templates.parse(resource)
    elif resource_type == "Communication":
        await threads.before_write(conn, resource)


async def task_written(conn: AsyncConnection, fhir_id: str, task: dict[str, Any] | None,
                       previous: dict[str, Any] | None) -> None:
    """Outbox work of a Task: its overdue check, its next occurrence (templates), its automation."""
    await overdue.task_written(conn, fhir_id, task, previous)
    await recurrence.task_written(conn, fhir_id, task, previous)
    await automation.task_written(conn, fhir_id, task, previous)
