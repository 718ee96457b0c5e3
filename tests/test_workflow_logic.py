"""The real `ServiceCancellation` on the time-skipping test server, with fake activities.

Time skips only while a test awaits `result()` of a started handle or calls
`env.sleep`; it never skips while an activity is running, so a blocked fake
activity holds the clock. The server is shared by the session and its clock only
moves forward, sometimes by years (right after an awaited result it jumps to the
next timer it still holds, stale ones included): dates are derived from
`env.get_current_time()` or from the activity's scheduled time, never fixed.
"""

from __future__ import annotations

import asyncio
import calendar
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bajas.models import (
    MAX_RESENDS,
    MAX_WRONG_CODES,
    BillingInput,
    BillingOutcome,
    CancellationInput,
    CancellationResult,
    CancellationStatus,
    ConfirmInput,
    DeprovisionInput,
    Effective,
    FinishInput,
    IssueCodeInput,
    NoticeInput,
    PaymentMethod,
    ReasonCode,
    ResendInput,
    RetryInput,
    ServiceCheckInput,
    State,
    StepStatus,
    VerifyCodeInput,
    WithdrawInput,
)
from tests import fakes
from tests.fakes import FakeActivities, accepted_check, code_for
from tests.helpers import assert_eventually, new_id
from worker import central_workers
from workflows import rules
from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner
from workflows.search_attributes import (
    ALL as SEARCH_ATTRIBUTES,
)
from workflows.search_attributes import (
    CANCELLATION_STATE,
    CUSTOMER_ID,
    RELEASE,
    SERVICE_ID,
    SLA_AT_RISK,
    release_queue,
    workflow_id_for,
)

BUSINESS_TZ = "America/Argentina/Buenos_Aires"
CUSTOMER = 7
WINDOW = timedelta(seconds=86400)


@dataclass
class Harness:
    env: WorkflowEnvironment
    fakes: FakeActivities
    task_queue: str
    service_id: int
    handles: list[WorkflowHandle[Any, Any]] = field(default_factory=list)

    async def start(self, **overrides: Any) -> WorkflowHandle[Any, CancellationResult]:
        data = CancellationInput(
            service_id=self.service_id, customer_id=CUSTOMER, requested_by="panel", release=RELEASE
        ).model_copy(update=overrides)
        handle = await self.env.client.start_workflow(
            ServiceCancellation.run,
            data,
            id=workflow_id_for(self.service_id),
            task_queue=release_queue(self.task_queue),
        )
        self.handles.append(handle)
        return handle


@pytest_asyncio.fixture
async def h(env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    harness = Harness(env, FakeActivities(clock=env.get_current_time), str(uuid.uuid4()), new_id())
    async with central_workers(
        env.client,
        harness.task_queue,
        workflows=[ServiceCancellation],
        activities=harness.fakes.activities(),
        workflow_runner=workflow_runner(),
    ):
        yield harness
        for gate in (
            harness.fakes.check_gate,
            harness.fakes.inventory_gate,
            harness.fakes.files_gate,
            harness.fakes.archive_gate,
        ):
            if gate is not None:
                gate.set()
    for handle in harness.handles:
        try:
            await handle.terminate("test over")
        except RPCError:
            pass  # already closed


# ---- helpers ----------------------------------------------------------------------


async def result_of(handle: WorkflowHandle[Any, CancellationResult]) -> CancellationResult:
    """The result, with time skipping; a hung workflow fails the test instead of the run."""
    return await asyncio.wait_for(handle.result(), timeout=30)


async def status(handle: WorkflowHandle[Any, Any]) -> CancellationStatus:
    return await handle.query(ServiceCancellation.status)


async def wait_status(
    handle: WorkflowHandle[Any, Any],
    pred: Callable[[CancellationStatus], bool],
    timeout: float = 10,
) -> CancellationStatus:
    """Poll the `status` query (in real time, so no time skips meanwhile)."""

    async def matched() -> CancellationStatus | None:
        current = await status(handle)
        return current if pred(current) else None

    # RPCError, WorkflowQueryFailedError: the first workflow task has not run yet
    return await assert_eventually(
        matched,
        "the status",
        timeout=timeout,
        interval=0.05,
        retry=(RPCError, WorkflowQueryFailedError),
    )


async def code_sent(handle: WorkflowHandle[Any, Any]) -> CancellationStatus:
    return await wait_status(handle, lambda s: s.code_sent)


async def confirm_code(handle: WorkflowHandle[Any, Any], code: str) -> Any:
    return await handle.execute_update(ServiceCancellation.confirm_code, ConfirmInput(code=code))


async def resend_code(handle: WorkflowHandle[Any, Any]) -> Any:
    return await handle.execute_update(ServiceCancellation.resend_code, ResendInput())


async def search_attributes(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    typed = (await handle.describe()).typed_search_attributes
    return {k.name: typed.get(k) for k in SEARCH_ATTRIBUTES}


def assert_nothing_deprovisioned(f: FakeActivities) -> None:
    assert f.deprovisioning_calls() == []
    assert "cancelled" not in f.notice_kinds()


def assert_deprovisioned_in_order(f: FakeActivities) -> None:
    """Billing first, then mailboxes and files (in any order), then the mark, then the mail."""
    order = [
        c.name
        for c in f.calls
        if c.name in fakes.DEPROVISIONING
        or (c.name == "send_notice" and c.input.kind == "cancelled")
    ]
    assert order[0] == "close_billing"
    assert sorted(order[1:3]) == ["delete_files", "delete_mailboxes"]
    assert order[3:] == ["finish_cancellation", "send_notice"]


def local(instant: datetime) -> datetime:
    return instant.astimezone(ZoneInfo(BUSINESS_TZ))


# ---- the happy path -----------------------------------------------------------------


async def test_happy_path_confirm_signal_cancels_in_order(h: Harness) -> None:
    f = h.fakes
    handle = await h.start(reason="me mudo")
    # Typed before this run has recorded that the code's mail left: it must wait, not fail.
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    result: CancellationResult = await result_of(handle)

    assert result.state is State.CANCELLED
    assert result.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    assert result.service_id == h.service_id
    assert (result.files_deleted, result.mailboxes_deleted) == (fakes.FILES, fakes.MAILBOXES)

    assert f.inputs("check_service") == [
        ServiceCheckInput(
            service_id=h.service_id, customer_id=CUSTOMER, requested_by="panel", reason="me mudo"
        )
    ]
    st = await status(handle)
    assert st.state is State.CANCELLED
    assert (st.service_id, st.customer_id, st.domain) == (h.service_id, CUSTOMER, "ejemplo.com.ar")
    assert st.attempts_left == MAX_WRONG_CODES
    assert st.resends_left == MAX_RESENDS
    assert st.code_sent
    assert st.requested_at is not None and st.confirmed_at is not None
    assert st.code_expires_at == st.requested_at + WINDOW
    assert st.finished_at is not None and st.finished_at >= st.confirmed_at
    assert st.billing_preview is BillingOutcome.DEBIT_CANCELLED
    assert st.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    [check] = f.returned_checks
    assert check.expires_on is not None
    assert st.billing_outcome is rules.outcome_at(
        st.confirmed_at, BUSINESS_TZ, check.expires_on, PaymentMethod.AUTO_DEBIT
    )
    assert not st.sla_at_risk
    assert st.steps.billing.status is StepStatus.DONE
    assert st.steps.billing.done == fakes.INVOICES_VOIDED + fakes.MANDATES_REVOKED
    assert st.steps.mailboxes.status is StepStatus.DONE
    assert st.steps.mailboxes.done == st.steps.mailboxes.total == fakes.MAILBOXES
    assert st.steps.files.status is StepStatus.DONE
    assert st.steps.files.done == fakes.FILES

    [issued] = f.inputs("issue_code")
    assert issued == IssueCodeInput(
        service_id=h.service_id,
        customer_id=CUSTOMER,
        generation=1,
        expires_at=st.requested_at + WINDOW,
        billing_preview=BillingOutcome.DEBIT_CANCELLED,
        debit_cutoff=rules.debit_cutoff(check.expires_on),
        inventory=fakes.INVENTORY,  # counted before the mail left
    )
    assert f.inputs("verify_code") == [
        VerifyCodeInput(generation=1, code="123456", service_id=h.service_id)
    ]

    assert_deprovisioned_in_order(f)
    target = DeprovisionInput(service_id=h.service_id, customer_id=CUSTOMER)
    assert f.inputs("close_billing") == [
        BillingInput(
            service_id=h.service_id,
            customer_id=CUSTOMER,
            outcome=BillingOutcome.DEBIT_CANCELLED,
            revoke_mandate=True,
            void_renewal_invoices=True,
        )
    ]
    assert f.inputs("delete_mailboxes") == [target]
    assert f.inputs("delete_files") == [target]
    assert f.inputs("finish_cancellation") == [
        FinishInput(
            service_id=h.service_id,
            customer_id=CUSTOMER,
            billing_outcome=BillingOutcome.DEBIT_CANCELLED,
            files_deleted=fakes.FILES,
            mailboxes_deleted=fakes.MAILBOXES,
        )
    ]
    assert f.inputs("send_notice") == [
        NoticeInput(
            kind="cancelled",
            service_id=h.service_id,
            customer_id=CUSTOMER,
            billing_outcome=BillingOutcome.DEBIT_CANCELLED,
        )
    ]
    [confirmed] = f.inputs("record_transition")
    assert confirmed.event == "confirmed"
    assert confirmed.from_state is State.AWAITING_CONFIRMATION
    assert confirmed.to_state is State.DEPROVISIONING
    assert confirmed.billing_outcome is BillingOutcome.DEBIT_CANCELLED

    assert await search_attributes(handle) == {
        SERVICE_ID.name: str(h.service_id),
        CUSTOMER_ID.name: str(CUSTOMER),
        CANCELLATION_STATE.name: "cancelled",
        SLA_AT_RISK.name: False,
    }


async def test_confirm_code_update_accepts_right_code(h: Harness) -> None:
    handle = await h.start()
    res = await confirm_code(handle, code_for(1))
    assert (res.accepted, res.attempts_left, res.state) == (
        True,
        MAX_WRONG_CODES,
        State.DEPROVISIONING,
    )
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert_deprovisioned_in_order(h.fakes)


# ---- the confirmation window ------------------------------------------------------


@pytest.mark.time_skipping
async def test_window_expires_in_test_time(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    st = await code_sent(handle)
    assert st.state is State.AWAITING_CONFIRMATION
    assert st.code_expires_at is not None and st.requested_at is not None

    result = await result_of(handle)  # skips the 24 hours
    assert result.state is State.EXPIRED
    assert result.billing_outcome is None

    st = await status(handle)
    assert st.state is State.EXPIRED
    assert st.finished_at is not None
    assert st.requested_at is not None  # narrows the type; checked above already
    assert st.finished_at >= st.requested_at + WINDOW
    assert st.finished_at - st.requested_at < WINDOW + timedelta(minutes=1)
    assert st.confirmed_at is None
    assert all(
        s.status is StepStatus.PENDING
        for s in (st.steps.billing, st.steps.mailboxes, st.steps.files)
    )
    assert f.inputs("verify_code") == []
    assert_nothing_deprovisioned(f)
    assert f.notice_kinds() == []
    [expired] = f.inputs("record_transition")
    assert (expired.event, expired.to_state) == ("expired", State.EXPIRED)
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "expired"


@pytest.mark.time_skipping
async def test_confirm_after_expiry_does_nothing(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    await h.env.sleep(WINDOW + timedelta(minutes=5))
    # The right code, but too late: either the run has already closed, or it ignores it.
    try:
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    except RPCError:
        pass
    result = await result_of(handle)
    assert result.state is State.EXPIRED
    assert result.billing_outcome is None
    assert f.inputs("verify_code") == []
    assert_nothing_deprovisioned(f)

    # Once closed, neither a signal nor an update reaches it.
    with pytest.raises(RPCError):
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    with pytest.raises((RPCError, WorkflowUpdateFailedError)):
        await confirm_code(handle, code_for(1))
    st = await status(handle)
    assert st.state is State.EXPIRED
    assert st.confirmed_at is None
    assert_nothing_deprovisioned(f)


# ---- wrong codes, malformed codes, resends ------------------------------------------


async def test_five_wrong_codes_lock(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    for expected_left in (4, 3, 2, 1, 0):
        res = await confirm_code(handle, "000000")
        assert not res.accepted
        assert res.attempts_left == expected_left
        assert res.state is (State.LOCKED if expected_left == 0 else State.AWAITING_CONFIRMATION)
    # Even the right code is refused now.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await confirm_code(handle, code_for(1))

    result = await result_of(handle)
    assert result.state is State.LOCKED
    assert result.billing_outcome is None
    st = await status(handle)
    assert (st.state, st.attempts_left, st.confirmed_at) == (State.LOCKED, 0, None)
    assert len(f.inputs("verify_code")) == MAX_WRONG_CODES
    assert_nothing_deprovisioned(f)
    # Every wrong code has its audit line (patch "audit-wrong-codes"), then the lock.
    events = f.events()
    assert sorted(e for e in events if e.startswith("code_rejected:")) == [
        f"code_rejected:{n}" for n in range(1, MAX_WRONG_CODES + 1)
    ]
    [locked] = [t for t in f.inputs("record_transition") if t.event == "locked"]
    assert locked.to_state is State.LOCKED
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "locked"


async def test_wrong_code_signals_count_too(h: Harness) -> None:
    handle = await h.start()
    for _ in range(MAX_WRONG_CODES):
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code="999999"))
    result = await result_of(handle)
    assert result.state is State.LOCKED
    assert (await status(handle)).attempts_left == 0
    assert_nothing_deprovisioned(h.fakes)


MALFORMED = [
    "abcdef",
    "12a456",
    "12345",
    "1234567",
    "",
    " 12345",
    "123456\n",
    "１２３４５６",  # full-width digits: str.isdigit() says yes
    "٣٣٣٣٣٣",  # Arabic-Indic digits
    "1" * 10240,
]


async def test_malformed_codes_are_rejected_by_the_validator(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    for code in MALFORMED:
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await confirm_code(handle, code)
        assert "6 digits" in str(err.value.cause), repr(code)
    # Not even decodable as the input model: rejected too.
    for raw in ({"code": 123456}, {"code": None}, "123456", [1, 2, 3]):
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("confirm_code", raw, result_type=dict)

    st = await status(handle)
    assert st.attempts_left == MAX_WRONG_CODES
    assert st.state is State.AWAITING_CONFIRMATION
    assert f.inputs("verify_code") == []

    res = await confirm_code(handle, code_for(1))
    assert (res.accepted, res.attempts_left) == (True, MAX_WRONG_CODES)
    assert (await result_of(handle)).state is State.CANCELLED
    assert f.inputs("verify_code") == [
        VerifyCodeInput(generation=1, code=code_for(1), service_id=h.service_id)
    ]


async def test_malformed_signals_are_ignored(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    for code in MALFORMED:
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code))
    for raw in ({"code": 12345}, {"code": None}, "garbage", [1, 2]):
        await handle.signal("confirm", raw)
    # Handled after the signals above: had any of them been tried, it would show here.
    res = await confirm_code(handle, code_for(1))
    assert (res.accepted, res.attempts_left) == (True, MAX_WRONG_CODES)
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert f.inputs("verify_code") == [
        VerifyCodeInput(generation=1, code=code_for(1), service_id=h.service_id)
    ]


@pytest.mark.time_skipping
async def test_resend_invalidates_the_old_code_and_moves_the_window(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    first = await code_sent(handle)
    assert first.code_expires_at is not None

    await h.env.sleep(timedelta(hours=20))
    res = await resend_code(handle)
    assert res.resends_left == MAX_RESENDS - 1
    assert res.code_expires_at >= first.code_expires_at + timedelta(hours=20)
    issued = f.inputs("issue_code")
    assert [i.generation for i in issued] == [1, 2]
    assert issued[1].expires_at == res.code_expires_at
    st = await status(handle)
    assert st.code_expires_at == res.code_expires_at
    assert st.resends_left == MAX_RESENDS - 1

    # Past the first code's 24 hours: only the new window counts.
    await h.env.sleep(timedelta(hours=20))
    old = await confirm_code(handle, code_for(1))
    assert (old.accepted, old.attempts_left, old.state) == (
        False,
        MAX_WRONG_CODES - 1,
        State.AWAITING_CONFIRMATION,
    )
    new = await confirm_code(handle, code_for(2))
    assert (new.accepted, new.attempts_left, new.state) == (
        True,
        MAX_WRONG_CODES - 1,
        State.DEPROVISIONING,
    )
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert f.inputs("verify_code") == [
        VerifyCodeInput(generation=2, code=code_for(1), service_id=h.service_id),
        VerifyCodeInput(generation=2, code=code_for(2), service_id=h.service_id),
    ]
    assert_deprovisioned_in_order(f)


async def test_at_most_three_resends(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    for left in (2, 1, 0):
        res = await resend_code(handle)
        assert res.resends_left == left
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await resend_code(handle)
    assert "no resends left" in str(err.value.cause)
    assert [i.generation for i in f.inputs("issue_code")] == [1, 2, 3, 4]
    st = await status(handle)
    assert (st.resends_left, st.attempts_left) == (0, MAX_WRONG_CODES)

    assert not (await confirm_code(handle, code_for(3))).accepted
    assert (await confirm_code(handle, code_for(4))).accepted
    assert (await result_of(handle)).state is State.CANCELLED


async def test_resend_refused_before_the_service_check(h: Harness) -> None:
    h.fakes.check_gate = asyncio.Event()
    handle = await h.start()
    await asyncio.wait_for(h.fakes.check_started.wait(), 10)
    with pytest.raises(WorkflowUpdateFailedError):
        await resend_code(handle)
    h.fakes.check_gate.set()
    st = await code_sent(handle)
    assert st.resends_left == MAX_RESENDS
    assert [i.generation for i in h.fakes.inputs("issue_code")] == [1]


# ---- withdrawal -----------------------------------------------------------------


async def test_withdraw_while_awaiting(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    await handle.signal(
        ServiceCancellation.withdraw, WithdrawInput(reason="me arrepentí", by="customer")
    )
    result = await result_of(handle)
    assert result.state is State.WITHDRAWN
    assert result.billing_outcome is None
    st = await status(handle)
    assert st.state is State.WITHDRAWN
    assert st.finished_at is not None
    assert_nothing_deprovisioned(f)
    [withdrawn] = f.inputs("record_transition")
    assert (withdrawn.event, withdrawn.to_state, withdrawn.actor) == (
        "withdrawn",
        State.WITHDRAWN,
        "customer",
    )
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "withdrawn"
    with pytest.raises(RPCError):
        await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert_nothing_deprovisioned(f)


async def test_withdraw_with_empty_input(h: Harness) -> None:
    handle = await h.start()
    await code_sent(handle)
    await handle.signal("withdraw", {})
    assert (await result_of(handle)).state is State.WITHDRAWN
    assert_nothing_deprovisioned(h.fakes)


async def test_withdraw_before_the_code_is_mailed_sends_no_code(h: Harness) -> None:
    """A customer who withdraws while the service is being checked gets no code mail."""
    f = h.fakes
    f.check_gate = asyncio.Event()
    handle = await h.start()
    await asyncio.wait_for(f.check_started.wait(), 10)
    await handle.signal(ServiceCancellation.withdraw, WithdrawInput())
    await wait_status(handle, lambda s: s.state is State.WITHDRAWN)
    f.check_gate.set()
    result = await result_of(handle)
    assert result.state is State.WITHDRAWN
    assert_nothing_deprovisioned(f)
    assert f.inputs("issue_code") == []


async def test_withdraw_update_answers_the_withdrawn_status(h: Harness) -> None:
    f = h.fakes
    handle = await h.start()
    await code_sent(handle)
    st = await handle.execute_update(
        ServiceCancellation.withdraw_cancellation, WithdrawInput(by="customer")
    )
    assert st.state is State.WITHDRAWN
    assert st.finished_at is not None and st.code_sent
    result = await result_of(handle)
    assert result.state is State.WITHDRAWN
    [withdrawn] = f.inputs("record_transition")
    assert (withdrawn.event, withdrawn.actor) == ("withdrawn", "customer")
    assert_nothing_deprovisioned(f)


async def test_withdraw_update_refused_once_confirmed(h: Harness) -> None:
    f = h.fakes
    f.files_gate = asyncio.Event()
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    await asyncio.wait_for(f.files_started.wait(), 10)
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(ServiceCancellation.withdraw_cancellation, WithdrawInput())
    assert "cannot withdraw: the cancellation is deprovisioning" in str(err.value.cause)
    f.files_gate.set()
    assert (await result_of(handle)).state is State.CANCELLED
    assert "withdrawn" not in f.events()
    assert_deprovisioned_in_order(f)


async def test_withdraw_during_deprovisioning_is_ignored(h: Harness) -> None:
    f = h.fakes
    f.files_gate = asyncio.Event()
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    await asyncio.wait_for(f.files_started.wait(), 10)
    await handle.signal(ServiceCancellation.withdraw, WithdrawInput(reason="tarde"))
    await asyncio.sleep(0.3)
    st = await status(handle)
    assert st.state is State.DEPROVISIONING
    assert st.steps.files.status is StepStatus.RUNNING
    f.files_gate.set()
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert (await status(handle)).state is State.CANCELLED
    assert "withdrawn" not in f.events()
    assert_deprovisioned_in_order(f)


# ---- rejection --------------------------------------------------------------------


async def test_rejected_service_gets_no_code(h: Harness) -> None:
    f = h.fakes
    f.check = accepted_check(
        accepted=False,
        rejection_reason="not the customer's service",
        domain=None,
        expires_on=None,
        payment_method=None,
    )
    handle = await h.start()
    result = await result_of(handle)
    assert result.state is State.REJECTED
    assert result.rejection_reason == "not the customer's service"
    assert result.billing_outcome is None
    st = await status(handle)
    assert st.state is State.REJECTED
    assert st.rejection_reason == "not the customer's service"
    assert not st.code_sent and st.code_expires_at is None
    assert st.billing_preview is None
    assert f.names() == ["check_service"]
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "rejected"


# ---- deprovisioning: refused paths and the 24-hour promise ---------------------------


@pytest.mark.time_skipping
async def test_refused_path_waits_for_retry(h: Harness) -> None:
    f = h.fakes
    f.files_refusals = 1
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    st = await wait_status(handle, lambda s: s.steps.files.status is StepStatus.REFUSED)
    assert st.state is State.DEPROVISIONING
    assert st.steps.files.detail and "HOSTING_ROOT" in st.steps.files.detail
    assert st.steps.billing.status is StepStatus.DONE

    # Hours go by: still waiting for an operator, the service not finished.
    await h.env.sleep(timedelta(hours=2))
    st = await status(handle)
    assert st.state is State.DEPROVISIONING
    assert st.steps.files.status is StepStatus.REFUSED
    assert st.steps.mailboxes.status is StepStatus.DONE
    assert "finish_cancellation" not in f.names()
    assert "cancelled" not in f.notice_kinds()
    assert len(f.inputs("delete_files")) == 1
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "deprovisioning"

    await handle.signal(ServiceCancellation.retry)
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert result.files_deleted == fakes.FILES
    assert len(f.inputs("delete_files")) == 2
    assert len(f.inputs("delete_mailboxes")) == 1
    assert f.names().count("finish_cancellation") == 1
    st = await status(handle)
    assert st.steps.files.status is StepStatus.DONE
    assert not st.sla_at_risk


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """What the Web UI shows as the workflow's current details."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(metadata.current_details)


async def test_failing_step_shows_its_error_and_retries_until_it_works(h: Harness) -> None:
    """Attempts and the last error are in `status` and the Web UI while the step fails;
    nothing after it happens until it works. Once it does, `error` is cleared and
    `attempts` says how many it took."""
    f = h.fakes
    f.files_failures = 3
    f.files_gate = asyncio.Event()  # the fourth attempt waits here
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    st = await wait_status(handle, lambda s: s.steps.files.attempts == 4, timeout=30)
    line = "PermissionError: [Errno 1] Operation not permitted: '…/locked.php'"
    assert st.state is State.DEPROVISIONING
    assert st.steps.files.status is StepStatus.RUNNING
    assert st.steps.files.error == line
    assert (st.steps.billing.attempts, st.steps.billing.error) == (1, None)
    assert f"files: attempt 4, {line}" in await current_details(handle)
    assert len(f.inputs("delete_files")) == 4
    assert "finish_cancellation" not in f.names()
    assert "cancelled" not in f.notice_kinds()

    f.files_gate.set()
    result = await result_of(handle)
    assert result.state is State.CANCELLED
    assert result.files_deleted == fakes.FILES
    st = await status(handle)
    assert st.steps.files.status is StepStatus.DONE
    assert (st.steps.files.attempts, st.steps.files.error) == (4, None)
    assert st.steps.files.done == fakes.FILES
    assert "locked.php" not in await current_details(handle)
    calls = f.deprovisioning_calls()
    assert (calls[0], calls[-1]) == ("close_billing", "finish_cancellation")
    assert (calls.count("delete_files"), calls.count("finish_cancellation")) == (4, 1)


async def test_a_worker_that_stops_answering_is_named_as_such(h: Harness) -> None:
    f = h.fakes
    f.files_hangs = 1
    f.files_gate = asyncio.Event()  # the second attempt waits here
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    st = await wait_status(handle, lambda s: s.steps.files.attempts == 2, timeout=40)
    assert st.steps.files.error == "the worker stopped answering (no heartbeat for 10 s)"
    assert st.state is State.DEPROVISIONING
    f.files_gate.set()
    assert (await result_of(handle)).state is State.CANCELLED
    st = await status(handle)
    assert (st.steps.files.status, st.steps.files.attempts) == (StepStatus.DONE, 2)


async def test_cancelling_the_workflow_is_not_a_failed_attempt(h: Harness) -> None:
    """After the SLA alert `run` awaits the steps themselves, so a cancellation of the
    workflow reaches the running activity: the step must stop, not try again."""
    f = h.fakes
    f.check = accepted_check(sla_limit_seconds=2)
    f.files_gate = asyncio.Event()
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    await asyncio.wait_for(f.files_started.wait(), 10)
    await wait_status(handle, lambda s: s.sla_at_risk)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await result_of(handle)
    assert len(f.inputs("delete_files")) == 1
    assert "finish_cancellation" not in f.names()
    assert (await status(handle)).steps.files.error is None


async def test_sla_alert_names_the_failing_step(h: Harness) -> None:
    f = h.fakes
    f.check = accepted_check(sla_limit_seconds=3600)
    f.files_retry_delays = [timedelta(hours=2)]
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await result_of(handle)).state is State.CANCELLED
    [sla] = [n for n in f.inputs("send_notice") if n.kind == "sla_at_risk"]
    assert sla.problems == ["files: attempt 1, Busy: file server busy"]
    [done] = [n for n in f.inputs("send_notice") if n.kind == "cancelled"]
    assert done.problems == []
    st = await status(handle)
    assert (st.steps.files.attempts, st.steps.files.error) == (2, None)


@pytest.mark.time_skipping
async def test_sla_at_risk_alerts_and_still_cancels(h: Harness) -> None:
    f = h.fakes
    f.check = accepted_check(sla_limit_seconds=3600)
    # The files step fails retryably and asks to be retried in 2 hours: past the SLA.
    f.files_retry_delays = [timedelta(hours=2)]
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    result = await result_of(handle)
    assert result.state is State.CANCELLED

    st = await status(handle)
    assert st.sla_at_risk
    assert st.confirmed_at is not None and st.finished_at is not None
    assert st.finished_at - st.confirmed_at >= timedelta(hours=2)
    assert f.notice_kinds() == ["sla_at_risk", "cancelled"]
    sla = f.inputs("send_notice")[0]
    assert (sla.service_id, sla.billing_outcome) == (h.service_id, BillingOutcome.DEBIT_CANCELLED)
    assert f.events() == ["confirmed", "sla_at_risk"]
    assert len(f.inputs("delete_files")) == 2
    assert f.names().count("finish_cancellation") == 1
    # The alert went out before the service was finished.
    names = f.names()
    assert names.index("send_notice") < names.index("finish_cancellation")
    attrs = await search_attributes(handle)
    assert attrs[SLA_AT_RISK.name] is True
    assert attrs[CANCELLATION_STATE.name] == "cancelled"


@pytest.mark.time_skipping
async def test_sla_audit_line_does_not_claim_awaiting_confirmation(h: Harness) -> None:
    """The SLA alert happens during deprovisioning; its audit line must not say otherwise."""
    f = h.fakes
    f.check = accepted_check(sla_limit_seconds=3600)
    f.files_retry_delays = [timedelta(hours=2)]
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    assert (await result_of(handle)).state is State.CANCELLED
    [sla] = [t for t in f.inputs("record_transition") if t.event == "sla_at_risk"]
    assert sla.to_state is None
    assert sla.from_state in (None, State.DEPROVISIONING)


# ---- the billing outcome at the confirmation instant ---------------------------------


@pytest.mark.time_skipping
@pytest.mark.parametrize(
    ("day", "at", "expected"),
    [
        # 02:00 on the 1st of the expiry month, Buenos Aires: the debit is at the bank.
        ("cutoff", time(2, 0), BillingOutcome.DEBIT_PROCESSED_NO_REFUND),
        # 22:00 the day before in Buenos Aires is already the 1st in UTC: still in time.
        ("eve", time(22, 0), BillingOutcome.DEBIT_CANCELLED),
        # On the expiry date itself: late.
        ("expiry", time(0, 30), BillingOutcome.LATE_NO_REFUND),
    ],
)
async def test_billing_outcome_judged_at_confirmation_in_business_tz(
    h: Harness, day: str, at: time, expected: BillingOutcome
) -> None:
    f = h.fakes
    tz = ZoneInfo(BUSINESS_TZ)
    today = local(await h.env.get_current_time()).date()
    cutoff = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    expires_on = cutoff + timedelta(days=14)
    f.check = accepted_check(
        expires_on=expires_on,
        payment_method=PaymentMethod.AUTO_DEBIT,
        business_tz=BUSINESS_TZ,
        confirmation_window_seconds=timedelta(days=60).total_seconds(),
    )
    handle = await h.start()
    st = await code_sent(handle)
    assert st.billing_preview is BillingOutcome.DEBIT_CANCELLED
    assert f.inputs("issue_code")[0].billing_preview is BillingOutcome.DEBIT_CANCELLED

    target_day = {
        "cutoff": cutoff,
        "eve": cutoff - timedelta(days=1),
        "expiry": expires_on,
    }[day]
    target = datetime.combine(target_day, at, tz)
    await h.env.sleep(target - await h.env.get_current_time())
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    result = await result_of(handle)

    assert result.state is State.CANCELLED
    assert result.billing_outcome is expected
    st = await status(handle)
    assert st.confirmed_at is not None
    assert local(st.confirmed_at).date() == target_day
    assert st.billing_preview is BillingOutcome.DEBIT_CANCELLED
    assert st.billing_outcome is expected
    assert [b.outcome for b in f.inputs("close_billing")] == [expected]
    assert [n.billing_outcome for n in f.inputs("send_notice")] == [expected]
    assert f.inputs("finish_cancellation")[0].billing_outcome is expected


async def test_manual_payer_has_no_further_charges(h: Harness) -> None:
    h.fakes.check = accepted_check(payment_method=PaymentMethod.MANUAL)
    handle = await h.start()
    await handle.signal(ServiceCancellation.confirm, ConfirmInput(code=code_for(1)))
    result = await result_of(handle)
    assert result.billing_outcome is BillingOutcome.NO_FURTHER_CHARGES
    assert (await status(handle)).billing_preview is BillingOutcome.NO_FURTHER_CHARGES


# ---- the end of the term (contract section 8) -----------------------------------------


def _offset_at_midnight(day: date, tz: ZoneInfo) -> timedelta | None:
    return datetime.combine(day, time(0), tz).utcoffset()


def _skips_midnight(day: date, tz: ZoneInfo) -> bool:
    midnight = datetime.combine(day, time(0), tz)
    return midnight.astimezone(ZoneInfo("UTC")).astimezone(tz).replace(tzinfo=None) != (
        midnight.replace(tzinfo=None)
    )


def expiry_on(kind: str, today: date, tz_name: str) -> date | None:
    """An `expires_on` at least two days after `today` of the kind a case needs:
    the 1st or the 31st of a month, the first midnight after a change of clocks, or a
    day whose midnight the clocks skip. None when the zone has no such day within years."""
    tz = ZoneInfo(tz_name)
    start = today + timedelta(days=2)
    if kind == "1st":
        return (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    if kind == "20th":  # two months on at least: confirmed a month before the debit cut-off
        return (start.replace(day=1) + timedelta(days=63)).replace(day=20)
    if kind == "31st":  # in a later month, so the debit cut-off is still ahead
        day = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        while calendar.monthrange(day.year, day.month)[1] != 31:
            day = (day + timedelta(days=32)).replace(day=1)
        return date(day.year, day.month, 31)
    for n in range(3 * 366):
        day = start + timedelta(days=n)
        if kind == "after_dst_change" and _offset_at_midnight(day, tz) != _offset_at_midnight(
            day - timedelta(days=1), tz
        ):
            return day
        if kind == "midnight_skipped" and _skips_midnight(day, tz):
            return day
    return None


async def start_end_of_term(
    h: Harness,
    kind: str,
    tz_name: str = BUSINESS_TZ,
    payment_method: PaymentMethod = PaymentMethod.AUTO_DEBIT,
) -> tuple[WorkflowHandle[Any, CancellationResult], date]:
    """A cancellation for the end of the term of a service paid by automatic debit,
    unless told otherwise."""
    today = (await h.env.get_current_time()).astimezone(ZoneInfo(tz_name)).date()
    expires_on = expiry_on(kind, today, tz_name)
    if expires_on is None:
        pytest.skip(f"{tz_name} has no {kind} day in the next years")
    h.fakes.check = accepted_check(
        expires_on=expires_on, business_tz=tz_name, payment_method=payment_method
    )
    handle = await h.start(effective=Effective.END_OF_TERM, reason_code=ReasonCode.PRECIO)
    await code_sent(handle)
    return handle, expires_on


@pytest.mark.time_skipping
@pytest.mark.parametrize(
    ("kind", "tz_name", "clock"),
    [
        pytest.param("1st", BUSINESS_TZ, "00:00", id="on-the-1st"),
        pytest.param("31st", BUSINESS_TZ, "00:00", id="on-the-31st"),
        pytest.param("after_dst_change", "Europe/Madrid", "00:00", id="madrid-across-dst"),
        # no 00:00 that day: the deletion starts at its first instant, 01:00
        pytest.param("midnight_skipped", "America/Santiago", "01:00", id="santiago-no-midnight"),
    ],
)
async def test_end_of_term_stays_scheduled_then_deletes_at_midnight(
    h: Harness, kind: str, tz_name: str, clock: str
) -> None:
    f = h.fakes
    tz = ZoneInfo(tz_name)
    handle, expires_on = await start_end_of_term(h, kind, tz_name)
    end = rules.term_end(expires_on, tz_name)
    assert f.inputs("issue_code")[0].term_end == end  # the code mail names the day
    pending = await status(handle)
    assert (pending.effective, pending.effective_at) == (Effective.END_OF_TERM, end)

    res = await confirm_code(handle, code_for(1))
    assert (res.accepted, res.state) == (True, State.SCHEDULED)
    st = await wait_status(handle, lambda s: "confirmed" in f.events())
    assert st.state is State.SCHEDULED
    assert st.confirmed_at is not None and st.effective_at == end
    assert st.reason_code is ReasonCode.PRECIO
    # The outcome is decided now, not at the end of the term (which would be "late").
    outcome = rules.outcome_at(st.confirmed_at, tz_name, expires_on, PaymentMethod.AUTO_DEBIT)
    assert st.billing_outcome is outcome is not BillingOutcome.LATE_NO_REFUND
    if kind in ("1st", "31st"):  # a month ahead at least: before the debit cut-off
        assert outcome is BillingOutcome.DEBIT_CANCELLED
    assert_nothing_deprovisioned(f)
    [confirmed] = f.inputs("record_transition")
    assert (confirmed.to_state, confirmed.details["effective_at"]) == (
        State.SCHEDULED,
        end.isoformat(),
    )
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "scheduled"
    # The wait is measured on the clock, not the calendar: across a change of clocks the
    # naive local difference is an hour off.
    confirmed_local = st.confirmed_at.astimezone(tz)
    naive = datetime.combine(expires_on, time(0)) - confirmed_local.replace(tzinfo=None)
    if kind == "after_dst_change":
        assert end - st.confirmed_at != naive
        assert abs((end - st.confirmed_at) - naive) == timedelta(hours=1)

    result = await result_of(handle)  # skips to the end of the term
    assert (result.state, result.billing_outcome) == (State.CANCELLED, outcome)
    st = await status(handle)
    started = next(e.at for e in st.timeline if e.event == "deprovisioning")
    # the server starts the timer when it gets the command, milliseconds after the task
    assert end <= started < end + timedelta(seconds=5)
    local = started.astimezone(tz)
    assert (local.date(), f"{local:%H:%M}") == (expires_on, clock)
    assert f.first_at("delete_files") >= end and f.first_at("delete_mailboxes") >= end
    assert_deprovisioned_in_order(f)
    assert [b.outcome for b in f.inputs("close_billing")] == [outcome]
    assert f.events() == ["confirmed", "term_ended"]
    [moved] = [t for t in f.inputs("record_transition") if t.event == "term_ended"]
    assert (moved.from_state, moved.to_state) == (State.SCHEDULED, State.DEPROVISIONING)
    [done] = f.inputs("send_notice")
    assert (done.kind, done.term_end) == ("cancelled", end)
    assert not st.sla_at_risk
    assert st.finished_at is not None and st.finished_at - end < timedelta(hours=1)


@pytest.mark.time_skipping
@pytest.mark.parametrize("via", ["signal", "update"])
async def test_withdraw_while_scheduled(h: Harness, via: str) -> None:
    f = h.fakes
    handle, expires_on = await start_end_of_term(h, "1st")
    assert (await confirm_code(handle, code_for(1))).state is State.SCHEDULED
    await h.env.sleep(timedelta(days=1))  # a day later, still waiting, nothing deleted
    st = await status(handle)
    assert st.state is State.SCHEDULED
    assert_nothing_deprovisioned(f)

    withdrawal = WithdrawInput(reason="me quedo", by="customer")
    if via == "signal":
        await handle.signal(ServiceCancellation.withdraw, withdrawal)
    else:
        answer = await handle.execute_update(ServiceCancellation.withdraw_cancellation, withdrawal)
        assert answer.state is State.WITHDRAWN
    result = await result_of(handle)
    assert result.state is State.WITHDRAWN
    st = await status(handle)
    assert st.state is State.WITHDRAWN
    assert st.finished_at is not None
    assert st.finished_at < rules.term_end(expires_on, BUSINESS_TZ)
    assert_nothing_deprovisioned(f)
    assert st.steps.billing.status is StepStatus.PENDING
    assert f.inputs("send_notice") == []  # nothing changed: nothing to tell
    assert f.events() == ["confirmed", "withdrawn"]
    [withdrawn] = [t for t in f.inputs("record_transition") if t.event == "withdrawn"]
    assert (withdrawn.from_state, withdrawn.to_state, withdrawn.actor) == (
        State.SCHEDULED,
        State.WITHDRAWN,
        "customer",
    )
    assert [e.event for e in st.timeline][-3:] == ["confirmed", "scheduled", "withdrawn"]
    assert (await search_attributes(handle))[CANCELLATION_STATE.name] == "withdrawn"


async def past(h: Harness, instant: datetime, by: timedelta = timedelta(hours=1)) -> None:
    """Skip the test server's clock to `by` after `instant`."""
    await h.env.sleep(instant - await h.env.get_current_time() + by)


async def scheduled_for(
    h: Harness, kind: str, payment_method: PaymentMethod = PaymentMethod.AUTO_DEBIT
) -> tuple[WorkflowHandle[Any, CancellationResult], date, CancellationStatus]:
    """Confirmed for the end of the term, and waiting for it."""
    handle, expires_on = await start_end_of_term(h, kind, payment_method=payment_method)
    assert (await confirm_code(handle, code_for(1))).state is State.SCHEDULED
    st = await wait_status(handle, lambda s: "confirmed" in h.fakes.events())
    assert st.state is State.SCHEDULED
    assert_nothing_deprovisioned(h.fakes)
    return handle, expires_on, st


@pytest.mark.time_skipping
@pytest.mark.parametrize("kind", ["20th", "1st"])
async def test_auto_debit_billing_closes_before_the_debit_then_deletes_at_term_end(
    h: Harness, kind: str
) -> None:
    """A `debit_cancelled` promises that the debit of the 1st never reaches the bank: the
    billing step runs at 00:00 on the day before, while site and mail keep working."""
    f = h.fakes
    handle, expires_on, st = await scheduled_for(h, kind)
    end = rules.term_end(expires_on, BUSINESS_TZ)
    cutoff = rules.debit_cutoff(expires_on)
    at_the_bank = rules.start_of_day(cutoff, BUSINESS_TZ)  # 00:00 on the 1st
    eve = at_the_bank - timedelta(days=1)  # Buenos Aires keeps one offset all year
    assert st.billing_outcome is BillingOutcome.DEBIT_CANCELLED
    assert (st.effective_at, st.billing_closes_at) == (end, eve)

    await past(h, eve)
    st = await wait_status(handle, lambda s: s.steps.billing.status is StepStatus.DONE)
    assert st.state is State.SCHEDULED  # the site and mail still work
    assert f.deprovisioning_calls() == ["close_billing"]
    billed = f.first_at("close_billing")
    assert eve <= billed < at_the_bank
    assert (local(billed).date(), f"{local(billed):%H:%M}") == (cutoff - timedelta(days=1), "00:00")
    assert f.inputs("close_billing") == [
        BillingInput(
            service_id=h.service_id,
            customer_id=CUSTOMER,
            outcome=BillingOutcome.DEBIT_CANCELLED,
            revoke_mandate=True,
            void_renewal_invoices=True,
        )
    ]

    result = await result_of(handle)  # skips to the end of the term
    assert (result.state, result.billing_outcome) == (
        State.CANCELLED,
        BillingOutcome.DEBIT_CANCELLED,
    )
    assert len(f.inputs("close_billing")) == 1  # the deprovisioning found it done
    assert_deprovisioned_in_order(f)
    assert f.first_at("delete_files") >= end and f.first_at("delete_mailboxes") >= end
    st = await status(handle)
    started = next(e.at for e in st.timeline if e.event == "deprovisioning")
    assert end <= started < end + timedelta(seconds=5)
    events = [e.event for e in st.timeline]
    assert events.index("billing_done") < events.index("deprovisioning")
    assert f.events() == ["confirmed", "term_ended"]
    assert [n.kind for n in f.inputs("send_notice")] == ["cancelled"]


@pytest.mark.time_skipping
@pytest.mark.parametrize("via", ["signal", "update"])
async def test_withdraw_after_billing_closed_keeps_the_site_and_billing_closed(
    h: Harness, via: str
) -> None:
    f = h.fakes
    handle, expires_on, st = await scheduled_for(h, "20th")
    end = rules.term_end(expires_on, BUSINESS_TZ)
    assert st.billing_closes_at is not None
    await past(h, st.billing_closes_at)
    await wait_status(handle, lambda s: s.steps.billing.status is StepStatus.DONE)

    withdrawal = WithdrawInput(reason="me quedo", by="customer")
    if via == "signal":
        await handle.signal(ServiceCancellation.withdraw, withdrawal)
    else:
        answer = await handle.execute_update(ServiceCancellation.withdraw_cancellation, withdrawal)
        assert answer.state is State.WITHDRAWN
        assert answer.steps.billing.status is StepStatus.DONE  # what the panel tells
    result = await result_of(handle)
    assert (result.state, result.billing_outcome) == (
        State.WITHDRAWN,
        BillingOutcome.DEBIT_CANCELLED,
    )
    assert (result.files_deleted, result.mailboxes_deleted) == (0, 0)
    assert f.deprovisioning_calls() == ["close_billing"]  # once; nothing deleted or marked
    assert f.events() == ["confirmed", "withdrawn"]
    [mail] = f.inputs("send_notice")
    assert (mail.kind, mail.term_end, mail.billing_outcome) == (
        "withdrawn",
        end,
        BillingOutcome.DEBIT_CANCELLED,
    )
    st = await status(handle)
    assert st.state is State.WITHDRAWN and st.steps.billing.status is StepStatus.DONE
    assert st.finished_at is not None and st.finished_at < end
    assert [e.event for e in st.timeline][-4:] == [
        "confirmed",
        "scheduled",
        "billing_done",
        "withdrawn",
    ]


@pytest.mark.time_skipping
async def test_manual_payer_billing_closes_with_the_deletion(h: Harness) -> None:
    """No debit to stop: billing closes at `effective_at`, as for any late outcome."""
    f = h.fakes
    handle, expires_on, st = await scheduled_for(h, "20th", PaymentMethod.MANUAL)
    end = rules.term_end(expires_on, BUSINESS_TZ)
    assert st.billing_outcome is BillingOutcome.NO_FURTHER_CHARGES
    assert (st.effective_at, st.billing_closes_at) == (end, end)
    await past(h, rules.debit_cutoff_eve(expires_on, BUSINESS_TZ), by=timedelta(days=1))
    assert (await status(handle)).state is State.SCHEDULED
    assert_nothing_deprovisioned(f)

    assert (await result_of(handle)).state is State.CANCELLED
    assert len(f.inputs("close_billing")) == 1
    assert f.first_at("close_billing") >= end
    assert_deprovisioned_in_order(f)


@pytest.mark.time_skipping
@pytest.mark.parametrize("trouble", ["refused", "failing"])
async def test_withdraw_while_early_billing_has_not_closed(h: Harness, trouble: str) -> None:
    """A refused preflight or a failed attempt changed nothing: the withdrawal ends the
    run there, billing as it was, and no further attempt runs."""
    f = h.fakes
    if trouble == "refused":
        f.billing_refusals = 1
    else:
        f.billing_failures = 1
    handle, _, st = await scheduled_for(h, "20th")
    assert st.billing_closes_at is not None
    # not as far as the next attempt, a second on (the clock holds still meanwhile)
    await past(h, st.billing_closes_at, by=timedelta(milliseconds=500))
    # waiting for an operator's retry, or for the next attempt
    await wait_status(
        handle,
        lambda s: s.steps.files.status is StepStatus.REFUSED or s.steps.billing.error is not None,
    )
    await handle.signal(ServiceCancellation.withdraw, WithdrawInput(by="customer"))
    assert (await result_of(handle)).state is State.WITHDRAWN
    st = await status(handle)
    assert st.steps.billing.status is not StepStatus.DONE
    assert len(f.inputs("close_billing")) == 1  # the attempt that did not close it, only
    assert f.inputs("send_notice") == []  # billing never closed: nothing to tell
    assert f.events() == ["confirmed", "withdrawn"]


@pytest.mark.time_skipping
async def test_early_billing_still_refused_at_term_end_is_not_run_twice(h: Harness) -> None:
    """The deprovisioning waits for the billing step already started, under the 24-hour
    promise, instead of running a second one; the operator's `retry` lets it go on."""
    f = h.fakes
    f.billing_refusals = 1
    handle, expires_on, st = await scheduled_for(h, "20th")
    end = rules.term_end(expires_on, BUSINESS_TZ)
    sla = timedelta(seconds=f.check.sla_limit_seconds)
    await past(h, end, by=sla + timedelta(hours=1))
    # a second billing step would have closed billing and deleted everything by now
    st = await wait_status(handle, lambda s: s.sla_at_risk)
    assert st.state is State.DEPROVISIONING
    assert st.steps.files.status is StepStatus.REFUSED
    assert f.deprovisioning_calls() == ["close_billing"]
    await handle.signal(ServiceCancellation.retry, RetryInput(by="operator"))
    assert (await result_of(handle)).state is State.CANCELLED
    # the refused attempt and the retried one, then the deletions
    calls = f.deprovisioning_calls()
    assert calls[:2] == ["close_billing", "close_billing"]
    assert sorted(calls[2:4]) == ["delete_files", "delete_mailboxes"]
    assert calls[4:] == ["finish_cancellation"]
    assert (await status(handle)).steps.billing.attempts == 2
    assert f.first_at("delete_files") >= end


async def test_end_of_term_already_over_deletes_at_once(h: Harness) -> None:
    """An end of term that has passed (the service expires today): nothing to wait for."""
    f = h.fakes
    today = local(await h.env.get_current_time()).date()
    f.check = accepted_check(expires_on=today)
    handle = await h.start(effective=Effective.END_OF_TERM)
    await code_sent(handle)
    assert f.inputs("issue_code")[0].term_end is None  # the mail does not promise a wait
    res = await confirm_code(handle, code_for(1))
    assert (res.accepted, res.state) == (True, State.DEPROVISIONING)
    result = await result_of(handle)
    assert (result.state, result.billing_outcome) == (
        State.CANCELLED,
        BillingOutcome.LATE_NO_REFUND,
    )
    st = await status(handle)
    assert st.effective is Effective.END_OF_TERM
    assert st.effective_at == st.confirmed_at
    assert "scheduled" not in [e.event for e in st.timeline]
    assert f.events() == ["confirmed"]
    assert f.inputs("send_notice")[0].term_end is None


async def test_the_timeline_runs_from_request_to_end(h: Harness) -> None:
    f = h.fakes
    handle = await h.start(reason_code=ReasonCode.CAMBIO_DE_PROVEEDOR, reason="me mudo")
    await code_sent(handle)
    await resend_code(handle)
    await confirm_code(handle, code_for(2))
    assert (await result_of(handle)).state is State.CANCELLED
    st = await status(handle)
    events = [e.event for e in st.timeline]
    assert events[:5] == ["requested", "code_sent", "code_resent", "confirmed", "deprovisioning"]
    assert events[5] == "billing_done"
    assert sorted(events[6:8]) == ["files_done", "mailboxes_done"]
    assert events[8:] == ["cancelled"]
    times = [e.at for e in st.timeline]
    assert times == sorted(times)
    assert (times[0], times[3], times[-1]) == (st.requested_at, st.confirmed_at, st.finished_at)
    # the request's when and why reach the service check, for the audit trail
    [checked] = f.inputs("check_service")
    assert (checked.effective, checked.reason_code, checked.reason) == (
        Effective.NOW,
        ReasonCode.CAMBIO_DE_PROVEEDOR,
        "me mudo",
    )
    assert (st.effective, st.reason_code) == (Effective.NOW, ReasonCode.CAMBIO_DE_PROVEEDOR)
    assert st.effective_at == st.confirmed_at
