"""Patient identity: server-assigned MRNs, duplicate matching, and the rules that follow a merge.

`before_write` is the one hook the write interactions call (create, update, conditional update, patch); it
also runs the document hooks (Binary bytes to the object store, DocumentReference attachment hashes).
`after_delete` is the one the delete interactions call.
"""

from typing import Any

from psycopg import AsyncConnection

from fhir_server.documents import hooks as documents
from fhir_server.identity import mrn, replaced


async def before_write(conn: AsyncConnection, resource: dict[str, Any], fhir_id: str | None,
                       base_url: str | None) -> None:
    """Refuse references to merged-away Patients; give a Patient that lacks one its MRN.

    `fhir_id` is None for a create; for an update it is the id being written (which may not exist yet).
    """
    await replaced.refuse_replaced_references(conn, resource, base_url)
    if resource.get("resourceType") == "Patient":
        await mrn.ensure_mrn(conn, resource, fhir_id)
    await documents.before_write(conn, resource, fhir_id, base_url)


async def after_delete(conn: AsyncConnection, resource_type: str, fhir_id: str) -> None:
    """409 for a Patient that a background merge still needs, and for the Task of that merge. Called with
    the deleted row locked until the commit, so a merge accepted meanwhile is seen here, or waits and then
    finds the Patient deleted."""
    if resource_type == "Patient":
        await replaced.refuse_during_merge(conn, [fhir_id], "deleted")
    elif resource_type == "Task":
        await replaced.refuse_deleting_merge_task(conn, fhir_id)
