"""The audit interceptor: every interaction that `dispatch` runs, HTTP request or Bundle entry, passes here.

It refuses writes of AuditEvents, keeps the audit trail to callers granted it, records the AuditEvent of the
interaction, and writes the client's X-Provenance. A successful interaction inside a database transaction
(every write) stores its record in that transaction, so a write and its audit commit or roll back together;
reads and failures go to the process's journal (audit/journal.py), which costs the request a memory copy.
Requests refused before any interaction ran (no valid token, unknown route, unusable body) are journaled
by `refused`, at the same cost as a read.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from fhir_server.audit import provenance
from fhir_server.audit.events import audit_event, resource_reference
from fhir_server.audit.journal import Journal, insert
from fhir_server.auth.scopes import AUDIT_TYPES
from fhir_server.errors import FHIRError
from fhir_server.request import FHIRRequest, Outcome, resource_outcome
from fhir_server.storage import repository

WRITES = frozenset({"create", "update", "patch", "delete"})
READS = frozenset({"read", "vread", "search", "history", "history-instance"})
UNEXPECTED = "12"
"""BALP/AuditEvent outcome `major failure`: the server failed with an unexpected error."""


@dataclass(slots=True)
class AuditContext:
    """What one HTTP request's interactions share (a Bundle's entries too): where the caller is, where
    records go, and the versions written so far (for the X-Provenance)."""

    address: str | None
    journal: Journal | None
    audit_reads: bool = True
    """False (FHIR_AUDIT_READS=false, for benchmark comparisons only): successful reads go unrecorded."""
    written: list[str] = field(default_factory=list)
    entered: bool = False
    """Whether an interaction of the request reached the interceptor (which then records its failures)."""


def _check_access(req: FHIRRequest, kind: str) -> None:
    if req.resource_type in AUDIT_TYPES and kind in WRITES:
        raise FHIRError.of(405, "not-supported", f"{req.resource_type} resources are written by the server only; "
                                                 "they cannot be created, updated, patched or deleted")
    principal = req.principal
    if principal is None or req.resource_type is not None:
        return
    # Searches of all types (system or `Compartment/id/*`) span the audit trail: only for callers granted it
    # (system history leaves out what the caller may not read, AuditEvents included: interactions/history.py).
    spans_audit = kind == "search" and req.operation is None and (
        not req.query_values("_type") or AUDIT_TYPES & set(",".join(req.query_values("_type")).split(",")))
    if spans_audit and not principal.may_read_audit():
        raise FHIRError.of(403, "forbidden", "Searches of all types, which may include AuditEvents, "
                                             "need a scope naming AuditEvent (e.g. system/AuditEvent.rs); "
                                             "name the types with _type instead")


async def _record(conn: AsyncConnection, req: FHIRRequest, context: AuditContext, event: tuple[str, bytes],
                  in_transaction: bool) -> None:
    if context.journal is not None:
        context.journal.recorded += 1
    if in_transaction and conn.info.transaction_status == TransactionStatus.INTRANS:
        await insert(conn, [event])
    elif context.journal is not None:
        context.journal.append(*event)
    elif conn.info.transaction_status == TransactionStatus.IDLE:
        await insert(conn, [event])  # no journal (a command-line import): straight to the table


def _write_record(req: FHIRRequest, kind: str, query: list[tuple[str, str]], context: AuditContext
                  ) -> repository.AuditRecord | None:
    """The record of a write's success, for the write statement to carry (storage/repository.py): the same
    AuditEvent as the one built from the outcome, whose version it knows before the handler returns."""
    if kind not in WRITES or req.resource_type is None or req.operation is not None \
            or (kind == "delete" and req.id is None):
        return None

    def event(stored: repository.StoredResource, created: bool) -> tuple[str, bytes]:
        if stored.deleted:
            outcome = Outcome(204, etag=stored.etag, last_modified=stored.last_updated)
        else:
            outcome = resource_outcome(201 if created else 200, stored, req.base_url, location=True)
        return audit_event(req, kind, query, context.address, outcome.status, outcome)

    return repository.AuditRecord(req.resource_type, req.id, event)


async def audited(conn: AsyncConnection, req: FHIRRequest, kind: str,
                  run: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """Run the interaction `kind` of `req` (authorization and handler: `run`) and audit it."""
    context = req.audit
    if context is None:
        return await run()
    context.entered = True
    query = req.query  # as the client sent it, before authorization adds the scopes' filters
    try:
        _check_access(req, kind)
        header = req.header(provenance.HEADER) if req.method in ("POST", "PUT", "PATCH", "DELETE") else None
        claimed = provenance.from_header(header, req.principal) if header else None
        record = _write_record(req, kind, query, context)
        riding = repository.audit_record.set(record)
        try:
            outcome = await run()
        finally:
            repository.audit_record.reset(riding)
        if kind in WRITES and outcome.status < 300:
            written = resource_reference(req, outcome)
            if written is not None and "/_history/" in written:
                context.written.append(written)
        if claimed is not None:
            await provenance.record(conn, claimed, context.written, req.base_url)
    except FHIRError as error:
        failure = "; ".join(issue.diagnostics for issue in error.issues)
        await _record(conn, req, context, audit_event(req, kind, query, context.address, error.status, None,
                                                      failure), False)
        raise
    except Exception as error:
        await _record(conn, req, context, audit_event(req, kind, query, context.address, 500, None,
                                                      type(error).__name__, UNEXPECTED), False)
        raise
    if record is not None and record.written:
        if context.journal is not None:
            context.journal.recorded += 1
    elif context.audit_reads or kind not in READS:
        await _record(conn, req, context, audit_event(req, kind, query, context.address, outcome.status, outcome),
                      True)
    return outcome


def refused(req: FHIRRequest, kind: str, error: FHIRError, requested: str) -> None:
    """Journal the AuditEvent of a request refused before it reached an interaction (`requested`: its method
    and path): the same journal append as a read, and the same batched flush, however many bad requests come."""
    context = req.audit
    if context is None or context.entered or context.journal is None:
        return
    failure = "; ".join(issue.diagnostics for issue in error.issues)
    context.journal.recorded += 1
    context.journal.append(*audit_event(req, kind, req.query, context.address, error.status, None, failure,
                                        requested=requested))
