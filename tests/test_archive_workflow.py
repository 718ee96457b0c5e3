"""The last copy in the real `ServiceCancellation`, with fake activities (the harness of
tests/test_workflow_logic.py): when a copy may be asked for, that it is deleted with the
rest, and that one not built in time is stopped without holding the deletion back.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from bajas.models import (
    ArchiveRequest,
    ArchiveState,
    ArchiveStatus,
    ConfirmInput,
    State,
)
from tests import fakes
from tests.fakes import accepted_check, code_for
from tests.test_workflow_logic import (  # noqa: F401 - the harness fixture
    CUSTOMER,
    Harness,
    code_sent,
    h,
    result_of,
    status,
    wait_status,
)
from workflows.cancellation import ServiceCancellation


def copy_request(customer_id: int = CUSTOMER) -> ArchiveRequest:
    return ArchiveRequest(customer_id=customer_id, token=secrets.token_urlsafe(32))


async def ask_for_copy(
    handle: WorkflowHandle[Any, Any], request: ArchiveRequest | None = None
) -> ArchiveStatus:
    return await handle.execute_update(
        ServiceCancellation.request_archive, request or copy_request()
    )


async def refused(handle: WorkflowHandle[Any, Any], request: ArchiveRequest | None = None) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await ask_for_copy(handle, request)
    return str(caught.value.cause)


async def test_copy_is_built_kept_and_deleted_after_the_files(h: Harness) -> None:  # noqa: F811
    f = h.fakes
    handle = await h.start()
    st = await code_sent(handle)
    assert st.archive is None
    request = copy_request()
    answer = await ask_for_copy(handle, request)
    assert answer.state is ArchiveState.BUILDING
    st = await wait_status(handle, lambda s: s.archive is not None and s.archive.state == "ready")
    assert st.archive is not None and st.archive.bytes == fakes.ARCHIVE_BYTES
    # A week, but never past the deletion: here the code's window plus the SLA.
    assert st.code_expires_at is not None and st.archive.expires_at is not None
    sla = timedelta(seconds=accepted_check().sla_limit_seconds)
    assert st.archive.expires_at == st.code_expires_at + sla
    link = await handle.query(ServiceCancellation.archive_link)
    assert link is not None and link.token == request.token
    assert request.token not in st.model_dump_json()

    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await result_of(handle)).state is State.CANCELLED
    names = f.names()
    assert names.index("build_archive") < names.index("close_billing")
    assert names.index("delete_files") < names.index("delete_archive")
    assert names.index("delete_mailboxes") < names.index("delete_archive")
    assert names.index("delete_archive") < names.index("finish_cancellation")
    [built] = f.inputs("build_archive")
    assert f.inputs("delete_archive") == [built]
    assert (built.token, built.generation) == (request.token, 1)
    [done] = [n for n in f.inputs("send_notice") if n.kind == "cancelled"]
    assert done.archive is ArchiveState.EXPIRED
    final = (await status(handle)).archive
    assert final is not None and final.state is ArchiveState.EXPIRED


async def test_copy_requests_refused_when_no_copy_can_be_made(h: Harness) -> None:  # noqa: F811
    f = h.fakes
    f.check_gate = asyncio.Event()
    handle = await h.start()
    await asyncio.wait_for(f.check_started.wait(), 10)
    assert "service check" in await refused(handle)
    f.check_gate.set()
    await code_sent(handle)
    assert "customer" in await refused(handle, copy_request(customer_id=CUSTOMER + 1))
    assert "token" in await refused(handle, ArchiveRequest(customer_id=CUSTOMER, token="1234"))
    f.archive_gate = asyncio.Event()
    await ask_for_copy(handle)
    assert "already building" in await refused(handle)
    f.archive_gate.set()
    await wait_status(handle, lambda s: s.archive is not None and s.archive.state == "ready")
    assert "already ready" in await refused(handle)

    f.files_gate = asyncio.Event()  # the run stays deleting while it is asked
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    await wait_status(handle, lambda s: s.state is not State.AWAITING_CONFIRMATION)
    assert "deletion has started" in await refused(handle)
    f.files_gate.set()
    assert (await result_of(handle)).state is State.CANCELLED
    with pytest.raises(RPCError):  # a closed run takes no update
        await ask_for_copy(handle)
    assert len(f.inputs("build_archive")) == 1


async def test_copy_not_built_by_its_deadline_is_stopped_and_the_deletion_goes_on(
    h: Harness,  # noqa: F811
) -> None:
    f = h.fakes
    f.check = accepted_check(archive_deadline_seconds=2)
    f.archive_gate = asyncio.Event()  # never set: a build that cannot finish
    handle = await h.start()
    await code_sent(handle)
    await ask_for_copy(handle)
    await asyncio.wait_for(f.archive_started.wait(), 10)
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await asyncio.wait_for(handle.result(), 60)).state is State.CANCELLED
    assert f.archive_cancelled == 1
    # whatever the stopped build wrote is deleted too
    assert f.inputs("delete_archive") == f.inputs("build_archive")
    [done] = [n for n in f.inputs("send_notice") if n.kind == "cancelled"]
    assert done.archive is ArchiveState.FAILED
    st = await status(handle)
    assert st.archive is not None and st.archive.state is ArchiveState.FAILED
    assert not st.sla_at_risk


async def test_an_expired_copy_is_deleted_and_may_be_asked_for_again(h: Harness) -> None:  # noqa: F811
    f = h.fakes
    f.check = accepted_check(archive_ttl_seconds=1)
    handle = await h.start()
    await code_sent(handle)
    await ask_for_copy(handle)
    await wait_status(handle, lambda s: s.archive is not None and s.archive.state == "expired")
    await wait_status(handle, lambda s: len(f.inputs("delete_archive")) == 1)
    assert f.inputs("delete_archive") == f.inputs("build_archive")

    again = await ask_for_copy(handle)
    assert again.state is ArchiveState.BUILDING
    await wait_status(handle, lambda s: len(f.inputs("build_archive")) == 2)
    first, second = f.inputs("build_archive")
    assert second.generation == 2 and second.token != first.token
    # A withdrawal ends the run: its copy goes too.
    await handle.signal(ServiceCancellation.withdraw)
    assert (await result_of(handle)).state is State.WITHDRAWN
    assert f.inputs("delete_archive") == [first, second]
    assert f.deprovisioning_calls() == []
