"""AuditEvent ids: unique, UUID-shaped (audit_log.id is a uuid), and never repeated by a forked process, whose
repeats would be dropped as already recorded."""

import os
import uuid

from fhir_server.audit import events


def test_ids_are_unique_uuids() -> None:
    ids = [events._event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(each)) == each for each in ids)


def test_a_forked_process_draws_its_own_ids() -> None:
    before = events._event_id()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, events._event_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert in_child.rsplit("-", 1)[0] != before.rsplit("-", 1)[0]
    assert in_child != events._event_id()
