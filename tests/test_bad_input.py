"""Bad input on the real stack (issue 4, item 2): each gets a clear error and changes nothing.

Malformed and brute-forced codes, messages in the wrong state, workflows started by
hand with ids the panel would never send, and unsafe `document_root` / `maildir`
values. Every test compares what a cancellation could touch before and after: panel
rows, directories on disk, mails in the sink, the workflow's state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.errors import PATH_REFUSED
from activities.safety import PanelPaths, check_paths
from bajas.models import (
    MAX_RESENDS,
    MAX_WRONG_CODES,
    BillingOutcome,
    CancellationInput,
    CancellationResult,
    CancellationStatus,
    ConfirmInput,
    ConfirmResult,
    ResendInput,
    RetryInput,
    State,
    Step,
    StepStatus,
    WithdrawInput,
)
from starter.client import CancellationError
from tests.conftest import Stack
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import ServiceFixture, add_mailbox, make_tree, tree_snapshot
from workflows.search_attributes import WORKFLOW_TYPE, workflow_id_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
FILES, MAILBOXES = Step.FILES, Step.MAILBOXES


CODE_SUBJECT = "Código de confirmación"
DONE_SUBJECT = "dado de baja"
# expires 2099: billing would void and revoke
FAR: dict[str, Any] = {"payment_method": "auto_debit"}

MALFORMED = {
    "letters": "abcdef",
    "letter_inside": "12a456",
    "five_digits": "12345",
    "seven_digits": "1234567",
    "empty": "",
    "spaces": " 12345",
    "newline": "123456\n",
    "sign": "-12345",
    "ten_kb": "1" * 10240,
    "fullwidth_digits": "１２３４５６",  # str.isdigit() says yes
    "arabic_indic_digits": "١٢٣٤٥٦",
    "superscript_digits": "¹²³⁴⁵⁶",
}


# ---- helpers -------------------------------------------------------------------------


def code_mails(stack: Stack, domain: str) -> list[Any]:
    return [m for m in mails_about(stack.mail, domain) if CODE_SUBJECT in m.subject]


def done_mails(stack: Stack, domain: str) -> list[Any]:
    return [m for m in mails_about(stack.mail, domain) if DONE_SUBJECT in m.subject]


async def request_and_code(stack: Stack, svc: ServiceFixture) -> tuple[str, str]:
    answer = await stack.cancellations.request(svc.service_id, svc.customer_id)
    assert answer.status.state is State.AWAITING_CONFIRMATION, answer.status
    mails = await assert_eventually(
        lambda: code_mails(stack, svc.domain), f"the code mail for {svc.domain}"
    )
    return answer.run_id, code_in(mails[0])


def wrong_codes(code: str, n: int) -> list[str]:
    return [f"{(int(code) + k) % 10**6:06d}" for k in range(1, n + 1)]


async def result_of(stack: Stack, service_id: int) -> CancellationResult:
    return await asyncio.wait_for(stack.cancellations.result(service_id), TIMEOUT)


async def terminate(stack: Stack, *service_ids: int) -> None:
    for sid in service_ids:
        handle = stack.cancellations.handle(sid)
        try:
            desc = await handle.describe()
        except RPCError:
            continue
        if desc.status is WorkflowExecutionStatus.RUNNING:
            await handle.terminate(reason="bad-input test over")


async def rows(stack: Stack, table: str, service_id: int) -> dict[int, dict[str, Any]]:
    recs = await stack.pool.fetch(
        f"select * from {table} where service_id = $1 order by id", service_id
    )
    return {r["id"]: dict(r) for r in recs}


async def panel_rows(stack: Stack, service_id: int) -> dict[str, Any]:
    """Every panel row of a service that a cancellation could change."""
    return {
        "service": dict(
            await stack.pool.fetchrow("select * from services where id = $1", service_id)
        ),
        "mailboxes": await rows(stack, "mailboxes", service_id),
        "invoices": await rows(stack, "invoices", service_id),
        "mandates": await rows(stack, "debit_mandates", service_id),
    }


async def snapshot(stack: Stack, svc: ServiceFixture) -> dict[str, Any]:
    snap = await panel_rows(stack, svc.service_id)
    snap["files"] = (
        tree_snapshot(svc.document_root)
        if svc.document_root is not None and svc.document_root.is_dir()
        else None
    )
    snap["maildirs"] = {str(m): tree_snapshot(m) for m in svc.maildirs}
    return snap


async def audit_events(stack: Stack, service_id: int) -> list[str]:
    recs = await stack.pool.fetch(
        "select event from bajas.audit_trail where service_id = $1 order by id", service_id
    )
    return [r["event"] for r in recs]


async def code_rows(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    recs = await stack.pool.fetch(
        "select generation, used_at, sent_at from bajas.confirmation_codes"
        " where run_id = $1 order by generation",
        run_id,
    )
    return [dict(r) for r in recs]


def assert_billing_open(snap: dict[str, Any]) -> None:
    """auto_renew on, the renewal invoice open, the mandate active: billing not closed."""
    assert snap["service"]["status"] == "active", snap["service"]
    assert snap["service"]["cancelled_at"] is None
    assert snap["service"]["auto_renew"] is True
    assert "open" in {i["status"] for i in snap["invoices"].values()}, snap["invoices"]
    assert [m["status"] for m in snap["mandates"].values()] == ["active"], snap["mandates"]


def assert_billing_closed(snap: dict[str, Any]) -> None:
    assert snap["service"]["status"] == "cancelled", snap["service"]
    assert snap["service"]["cancelled_at"] is not None
    assert snap["service"]["auto_renew"] is False
    assert "open" not in {i["status"] for i in snap["invoices"].values()}, snap["invoices"]
    assert [m["status"] for m in snap["mandates"].values()] == ["revoked"], snap["mandates"]


def update_message(err: WorkflowUpdateFailedError) -> str:
    cause: BaseException | None = err.cause
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause  # type: ignore[union-attr]
    return str(getattr(cause, "message", None) or cause)


# ---- malformed codes ---------------------------------------------------------------------


async def test_malformed_codes_change_nothing(stack: Stack) -> None:
    svc = await stack.panel.service(**FAR)
    before = await snapshot(stack, svc)
    run_id, code = await request_and_code(stack, svc)
    events = await audit_events(stack, svc.service_id)
    handle = stack.cancellations.handle(svc.service_id)

    try:
        for name, bad in MALFORMED.items():
            # the public client refuses it before it reaches Temporal
            with pytest.raises(CancellationError) as err:
                await stack.cancellations.confirm(svc.service_id, bad)
            assert str(err.value) == "the confirmation code must be exactly 6 digits", name
            # the update itself: rejected by its validator, never counted
            with pytest.raises(WorkflowUpdateFailedError) as failed:
                await handle.execute_update(
                    "confirm_code", ConfirmInput(code=bad), result_type=ConfirmResult
                )
            assert "exactly 6 digits" in update_message(failed.value), name
            # the signal: ignored
            await handle.signal("confirm", ConfirmInput(code=bad))
        # payloads that are not even a ConfirmInput (a null signal: see the test below)
        for raw in ({"code": 123456}, {"code": None}, {}, "123456", [1, 2, 3], None):
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update("confirm_code", raw, result_type=ConfirmResult)
            if raw is not None:
                await handle.signal("confirm", raw)

        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.AWAITING_CONFIRMATION
        assert status.attempts_left == MAX_WRONG_CODES == 5
        assert status.resends_left == MAX_RESENDS
        assert status.confirmed_at is None and status.billing_outcome is None
        assert await snapshot(stack, svc) == before
        assert await audit_events(stack, svc.service_id) == events
        assert [r["used_at"] for r in await code_rows(stack, run_id)] == [None]
        assert len(mails_about(stack.mail, svc.domain)) == 1

        # nothing was counted: the right code still has all five attempts behind it
        right = await stack.cancellations.confirm(svc.service_id, code)
        assert (right.accepted, right.attempts_left) == (True, MAX_WRONG_CODES)
        assert (await result_of(stack, svc.service_id)).state is State.CANCELLED
    finally:
        await terminate(stack, svc.service_id)


async def test_null_confirm_signal_is_ignored(stack: Stack) -> None:
    svc = await stack.panel.service(**FAR)
    before = await snapshot(stack, svc)
    _, code = await request_and_code(stack, svc)
    handle = stack.cancellations.handle(svc.service_id)
    try:
        await handle.signal("confirm", None)  # `temporal workflow signal` without --input
        status = await asyncio.wait_for(stack.cancellations.status(svc.service_id), 3)
        assert status.state is State.AWAITING_CONFIRMATION
        assert status.attempts_left == MAX_WRONG_CODES
        assert await snapshot(stack, svc) == before
        right = await asyncio.wait_for(stack.cancellations.confirm(svc.service_id, code), 5)
        assert (right.accepted, right.attempts_left) == (True, MAX_WRONG_CODES)
    finally:
        await terminate(stack, svc.service_id)


# ---- brute force -----------------------------------------------------------------------


@pytest.mark.parametrize("via", ["update", "signal"])
async def test_brute_force_stops_at_five_tries(stack: Stack, via: str) -> None:
    svc = await stack.panel.service(**FAR)
    before = await snapshot(stack, svc)
    run_id, code = await request_and_code(stack, svc)
    handle = stack.cancellations.handle(svc.service_id)

    try:
        for n, guess in enumerate(wrong_codes(code, MAX_WRONG_CODES), start=1):
            if via == "update":
                answer = await stack.cancellations.confirm(svc.service_id, guess)
                assert answer.accepted is False
                assert answer.attempts_left == MAX_WRONG_CODES - n
                assert answer.state is (
                    State.LOCKED if n == MAX_WRONG_CODES else State.AWAITING_CONFIRMATION
                )
            else:
                await handle.signal("confirm", ConfirmInput(code=guess))
        result = await result_of(stack, svc.service_id)
        assert result.state is State.LOCKED
        assert result.billing_outcome is None

        # the right code, now: refused by the client and by the server
        with pytest.raises(CancellationError):
            await stack.cancellations.confirm(svc.service_id, code)
        with pytest.raises(RPCError):
            await handle.signal("confirm", ConfirmInput(code=code))
        with pytest.raises(CancellationError):
            await stack.cancellations.resend(svc.service_id)

        status = await stack.cancellations.status(svc.service_id)
        assert (status.state, status.attempts_left) == (State.LOCKED, 0)
        assert status.confirmed_at is None
        assert await snapshot(stack, svc) == before
        assert len(code_mails(stack, svc.domain)) == 1 and done_mails(stack, svc.domain) == []
        assert [r["used_at"] for r in await code_rows(stack, run_id)] == [None]
        events = await audit_events(stack, svc.service_id)
        assert "locked" in events
        assert not {"confirmed", "billing_closed", "files_deleted", "cancelled"} & set(events)
    finally:
        await terminate(stack, svc.service_id)


# ---- messages in the wrong state -------------------------------------------------------------


async def test_messages_after_the_cancellation_ended_are_refused(stack: Stack) -> None:
    svc = await stack.panel.service(**FAR)
    _, code = await request_and_code(stack, svc)
    handle = stack.cancellations.handle(svc.service_id)
    answer = await stack.cancellations.confirm(svc.service_id, code)
    assert answer.accepted
    # a withdrawal right after the confirmation, racing the deletion: ignored
    await handle.signal("withdraw", WithdrawInput(reason="demasiado tarde"))
    result = await result_of(stack, svc.service_id)
    assert result.state is State.CANCELLED
    await assert_eventually(lambda: done_mails(stack, svc.domain), "the 'dado de baja' mail")

    after = await panel_rows(stack, svc.service_id)
    assert_billing_closed(after)
    events = await audit_events(stack, svc.service_id)
    assert "withdrawn" not in events
    mails = len(mails_about(stack.mail, svc.domain))

    # refused (the wording is checked in test_messages_after_the_end_say_it_ended)
    with pytest.raises(CancellationError):
        await stack.cancellations.confirm(svc.service_id, code)
    with pytest.raises(CancellationError):
        await stack.cancellations.resend(svc.service_id)
    with pytest.raises(CancellationError) as err:
        await stack.cancellations.withdraw(svc.service_id)
    assert str(err.value) == "cannot withdraw: the cancellation is cancelled"
    for name, arg in (
        ("confirm", ConfirmInput(code=code)),
        ("withdraw", WithdrawInput()),
        ("retry", RetryInput()),
    ):
        with pytest.raises(RPCError) as rpc:
            await handle.signal(name, arg)
        assert "completed" in rpc.value.message, rpc.value.message

    assert (await stack.cancellations.status(svc.service_id)).state is State.CANCELLED
    assert await panel_rows(stack, svc.service_id) == after
    assert await audit_events(stack, svc.service_id) == events
    assert len(mails_about(stack.mail, svc.domain)) == mails


@pytest.mark.parametrize("ending", ["cancelled", "locked"])
async def test_messages_after_the_end_say_it_ended(stack: Stack, ending: str) -> None:
    svc = await stack.panel.service(**FAR)
    _, code = await request_and_code(stack, svc)
    if ending == "cancelled":
        assert (await stack.cancellations.confirm(svc.service_id, code)).accepted
    else:
        for guess in wrong_codes(code, MAX_WRONG_CODES):
            await stack.cancellations.confirm(svc.service_id, guess)
    assert (await result_of(stack, svc.service_id)).state.value == ending

    for action in (
        lambda: stack.cancellations.confirm(svc.service_id, code),
        lambda: stack.cancellations.resend(svc.service_id),
    ):
        with pytest.raises(CancellationError) as err:
            await action()
        message = str(err.value)
        assert "no cancellation" not in message, message
        assert str(svc.service_id) in message and "ended" in message, message


async def test_messages_during_deprovisioning_are_refused(stack: Stack, tmp_path: Path) -> None:
    """Deprovisioning held by a refused path; the customer's messages change nothing."""
    svc = await stack.panel.service(**FAR, document_root="relativo/sitio", mailboxes=1)
    handle = stack.cancellations.handle(svc.service_id)
    try:
        _, code = await request_and_code(stack, svc)
        assert (await stack.cancellations.confirm(svc.service_id, code)).accepted
        await assert_eventually(
            lambda: _step_is(stack, svc.service_id, "files", StepStatus.REFUSED),
            "the files step refused",
        )
        before = await snapshot(stack, svc)
        events = await audit_events(stack, svc.service_id)

        await handle.signal("withdraw", WithdrawInput(reason="me arrepentí"))
        await handle.signal("withdraw", None)
        with pytest.raises(CancellationError) as err:
            await stack.cancellations.withdraw(svc.service_id)
        assert str(err.value) == "cannot withdraw: the cancellation is deprovisioning"
        with pytest.raises(CancellationError) as err:
            await stack.cancellations.resend(svc.service_id)
        assert "not awaiting confirmation" in str(err.value), err.value
        with pytest.raises(CancellationError) as err:
            await stack.cancellations.confirm(svc.service_id, code)
        assert "not awaiting confirmation" in str(err.value), err.value
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("resend_code", ResendInput())
        await handle.signal("confirm", ConfirmInput(code=code))
        await asyncio.sleep(0.3)

        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.DEPROVISIONING
        assert status.resends_left == MAX_RESENDS and status.attempts_left == MAX_WRONG_CODES
        assert await snapshot(stack, svc) == before
        assert await audit_events(stack, svc.service_id) == events
        assert len(code_mails(stack, svc.domain)) == 1

        safe = stack.settings.hosting_root / f"arreglado-{uuid.uuid4().hex[:8]}"
        make_tree(safe, 3)
        await stack.pool.execute(
            "update services set document_root = $2 where id = $1", svc.service_id, str(safe)
        )
        await handle.signal("retry", RetryInput(by="operator"))
        result = await result_of(stack, svc.service_id)
        assert result.state is State.CANCELLED  # not withdrawn
        assert not safe.exists()
        assert "withdrawn" not in await audit_events(stack, svc.service_id)
    finally:
        await terminate(stack, svc.service_id)


async def _step_is(stack: Stack, service_id: int, step: str, status: StepStatus) -> bool:
    current = await stack.cancellations.status(service_id)
    return getattr(current.steps, step).status is status


# ---- workflows started by hand -------------------------------------------------------------


async def _start_by_hand(stack: Stack, service_id: int, customer_id: int) -> Any:
    return await stack.client.start_workflow(
        WORKFLOW_TYPE,
        CancellationInput(service_id=service_id, customer_id=customer_id, requested_by="a mano"),
        id=workflow_id_for(service_id),
        task_queue=stack.settings.temporal_task_queue,
        result_type=CancellationResult,
    )


async def test_started_by_hand_for_another_customers_service(stack: Stack) -> None:
    svc = await stack.panel.service(**FAR)
    stranger, _ = await stack.panel.customer()
    before = await snapshot(stack, svc)
    handle = await _start_by_hand(stack, svc.service_id, stranger)
    try:
        result = await asyncio.wait_for(handle.result(), TIMEOUT)
        assert result.state is State.REJECTED
        assert result.rejection_reason == "not the customer's service"
        assert result.billing_outcome is None
        status = await handle.query("status", result_type=CancellationStatus)
        assert (status.state, status.code_sent, status.domain) == (State.REJECTED, False, None)
        await asyncio.sleep(0.3)
        assert await snapshot(stack, svc) == before
        assert mails_about(stack.mail, svc.domain) == []
    finally:
        await terminate(stack, svc.service_id)


@pytest.mark.parametrize(
    ("service_id", "customer_id"),
    [
        pytest.param(-5, 1, id="negative"),
        pytest.param(0, 1, id="zero"),
        pytest.param(2**63 - 1, 1, id="largest_bigint"),
        pytest.param(2**63, 1, id="2**63"),
        pytest.param(10**30, 1, id="10**30"),
        pytest.param(-(2**63) - 1, 1, id="below_smallest_bigint"),
        pytest.param(9_223_372_036_854_000_001, 10**30, id="huge_customer_id"),
    ],
)
async def test_started_by_hand_with_an_impossible_id(
    stack: Stack, service_id: int, customer_id: int
) -> None:
    mails = len(stack.mail.messages)
    handle = await _start_by_hand(stack, service_id, customer_id)
    try:
        # the result arrives: no workflow task or activity stuck retrying
        result = await asyncio.wait_for(handle.result(), 3)
        assert result.state is State.REJECTED
        assert result.rejection_reason == "unknown service"
        assert result.service_id == service_id
        assert len(stack.mail.messages) == mails
    finally:
        await terminate(stack, service_id)


# ---- unsafe paths --------------------------------------------------------------------------

# (step, case, words the refusal's detail must contain)
PATH_CASES: list[Any] = [
    (FILES, "slash", "not strictly inside"),
    (FILES, "root_itself", "not strictly inside"),
    (FILES, "root_itself_dot", "not strictly inside"),
    (FILES, "dotdot_to_parent_of_roots", "not strictly inside"),
    (FILES, "dotdot_out", "not strictly inside"),
    (FILES, "link_out", "outside"),
    (FILES, "link_to_root", "outside"),
    (FILES, "shared_equal", "shared with another service"),
    (FILES, "shared_other_nested_inside", "shared with another service"),
    (FILES, "shared_inside_other", "shared with another service"),
    (FILES, "relative", "not an absolute path"),
    (MAILBOXES, "slash", "not strictly inside"),
    (MAILBOXES, "root_itself", "not strictly inside"),
    (MAILBOXES, "dotdot_to_parent_of_roots", "not strictly inside"),
    (MAILBOXES, "dotdot_out", "not strictly inside"),
    (MAILBOXES, "link_out", "outside"),
    (MAILBOXES, "shared_equal", "shared with another service"),
    (MAILBOXES, "shared_other_nested_inside", "shared with another service"),
    (MAILBOXES, "relative", "not an absolute path"),
]

# a `..` after a link, and other services' paths spelled differently (`.`, a link)
PATH_SPELLING_CASES = [
    pytest.param(
        FILES,
        "link_then_dotdot",
        "outside",
    ),
    pytest.param(
        MAILBOXES,
        "link_then_dotdot",
        "outside",
    ),
    pytest.param(
        FILES,
        "shared_equal_other_spelled_with_dot",
        "shared with another service",
    ),
    pytest.param(
        FILES,
        "shared_equal_other_through_link",
        "shared with another service",
    ),
    pytest.param(
        MAILBOXES,
        "shared_equal_other_spelled_with_dot",
        "shared with another service",
    ),
]


def _new_id() -> int:
    return 10**12 + uuid.uuid4().int % 10**11


async def _insert_mailbox(stack: Stack, service_id: int, maildir: str) -> int:
    """A mailbox row whose maildir is written as given (nothing created on disk)."""
    mid = _new_id()
    await stack.pool.execute(
        "insert into mailboxes (id, service_id, address, maildir) values ($1,$2,$3,$4)",
        mid,
        service_id,
        f"malo{mid}@example.test",
        maildir,
    )
    return mid


async def _set_document_root(stack: Stack, service_id: int, path: str) -> None:
    await stack.pool.execute(
        "update services set document_root = $2 where id = $1", service_id, path
    )


class PathCase:
    """A target service with one unsafe path, a bystander service, and a tree outside."""

    def __init__(self, stack: Stack, tmp_path: Path, step: str, case: str) -> None:
        self.stack = stack
        self.step = step
        self.case = case
        self.tag = uuid.uuid4().hex[:8]
        self.root = stack.settings.hosting_root if step == FILES else stack.settings.mail_root
        self.outside = tmp_path / f"afuera-{self.tag}"
        make_tree(self.outside, 3)
        (self.outside / "keep.txt").write_text("not any service's")
        self.bad_mailbox: int | None = None
        self.bad_path = ""
        self.sharer: ServiceFixture | None = None
        self.keep: list[Path] = [self.outside]  # trees that must survive, even after retry

    async def build(self) -> ServiceFixture:
        stack, root, tag = self.stack, self.root, self.tag
        base = root.parent  # holds both HOSTING_ROOT and MAIL_ROOT
        case = self.case
        shared = root / f"compartido-{tag}"
        if case == "slash":
            bad = "/"
        elif case == "root_itself":
            bad = str(root)
        elif case == "root_itself_dot":
            bad = f"{root}/."
        elif case == "dotdot_to_parent_of_roots":
            bad = f"{root}/sitio-{tag}/../.."
        elif case == "dotdot_out":
            bad = f"{root}/a/../..{'/..' * len(base.parts[1:])}{self.outside}"
        elif case in ("link_out", "link_to_root", "link_then_dotdot"):
            link = root / f"enlace-{tag}"
            if case == "link_out":
                link.symlink_to(self.outside, target_is_directory=True)
                bad = str(link)
            elif case == "link_to_root":
                link.symlink_to(root, target_is_directory=True)
                bad = str(link)
            else:
                # the system resolves link/.. to the link target's parent: outside/victima
                (self.outside / "hondo").mkdir()
                link.symlink_to(self.outside / "hondo", target_is_directory=True)
                make_tree(self.outside / f"victima-{tag}", 2)
                make_tree(root / f"victima-{tag}", 2)  # what a lexical `..` points at
                self.keep.append(root / f"victima-{tag}")
                bad = f"{link}/../victima-{tag}"
        elif case.startswith("shared"):
            make_tree(shared, 3)
            sharer_path = {
                "shared_equal": str(shared),
                "shared_equal_other_spelled_with_dot": f"{root}/./compartido-{tag}",
                "shared_other_nested_inside": str(shared / "adentro"),
                "shared_inside_other": str(shared),
            }.get(case)
            if case == "shared_equal_other_through_link":
                alias = root / f"alias-{tag}"
                alias.symlink_to(shared, target_is_directory=True)
                sharer_path = str(alias)
            assert sharer_path is not None
            if case == "shared_other_nested_inside":
                make_tree(shared / "adentro", 2)
            bad = str(shared / "sub") if case == "shared_inside_other" else str(shared)
            if case == "shared_inside_other":
                make_tree(shared / "sub", 2)
            self.sharer = await self._sharer(sharer_path)
            self.keep.append(shared)
        elif case == "relative":
            bad = f"relativo-{tag}/sitio"
        else:
            raise AssertionError(case)

        self.bad_path = bad
        # rows written exactly as given (pathlib would tidy `/./` and `//` away)
        if self.step == FILES:
            svc = await stack.panel.service(**FAR, document_root=None, mailboxes=1)
            await _set_document_root(stack, svc.service_id, bad)
        else:
            svc = await stack.panel.service(**FAR, mailboxes=1)
            self.bad_mailbox = await _insert_mailbox(stack, svc.service_id, bad)
        return svc

    async def _sharer(self, path: str) -> ServiceFixture:
        """Another customer's active service whose own data lies at `path`."""
        if self.step == FILES:
            sharer = await self.stack.panel.service(document_root=None, mailboxes=0)
            await _set_document_root(self.stack, sharer.service_id, path)
            sharer.document_root = Path(path)
        else:
            sharer = await self.stack.panel.service(document_root=None, mailboxes=0)
            mid = await add_mailbox(self.stack.pool, sharer.service_id, Path(path))
            await self.stack.pool.execute(
                "update mailboxes set maildir = $2 where id = $1", mid, path
            )
            sharer.maildirs.append(Path(path))
        return sharer

    async def fix(self, svc: ServiceFixture) -> Path:
        """What an operator does: point the row at the service's real, safe data."""
        safe = self.root / f"arreglado-{self.tag}"
        if self.step == FILES:
            make_tree(safe, 3)
            await self.stack.pool.execute(
                "update services set document_root = $2 where id = $1", svc.service_id, str(safe)
            )
        else:
            for sub in ("cur", "new", "tmp"):
                (safe / sub).mkdir(parents=True, exist_ok=True)
            (safe / "cur" / "1.mail:2,S").write_text("Subject: hola\n\ncuerpo\n")
            await self.stack.pool.execute(
                "update mailboxes set maildir = $2 where id = $1", self.bad_mailbox, str(safe)
            )
        return safe


def _disk(*trees: Path) -> dict[str, Any]:
    return {str(t): tree_snapshot(t) for t in trees}


@pytest.mark.parametrize(("step", "case", "words"), PATH_CASES + PATH_SPELLING_CASES)
async def test_unsafe_path_is_refused_then_retried(
    stack: Stack, tmp_path: Path, step: str, case: str, words: str
) -> None:
    hosting_root, mail_root = stack.settings.hosting_root, stack.settings.mail_root
    setup = PathCase(stack, tmp_path, step, case)
    svc = await setup.build()
    bystander = await stack.panel.service(**FAR, mailboxes=1)
    others = [bystander] + ([setup.sharer] if setup.sharer else [])
    watched = [sid for sid in (svc.service_id, *(o.service_id for o in others))]

    # Guard: the preflight must refuse before the workflow is allowed anywhere near
    # these paths (a broken check here would otherwise delete real data).
    with pytest.raises(ApplicationError) as refused:
        await check_paths(
            stack.pool,
            svc.service_id,
            {FILES: hosting_root, MAILBOXES: mail_root},
            PanelPaths(stack.pool),
        )
    assert refused.value.type == PATH_REFUSED
    assert refused.value.details == (step,)
    assert words in refused.value.message, refused.value.message

    target_before = await snapshot(stack, svc)
    others_before = [await snapshot(stack, o) for o in others]
    disk_before = _disk(hosting_root, mail_root, *setup.keep)
    handle = stack.cancellations.handle(svc.service_id)
    try:
        run_id, code = await request_and_code(stack, svc)
        assert (await stack.cancellations.confirm(svc.service_id, code)).accepted
        status = await assert_eventually(
            lambda: _status_if(
                stack, svc.service_id, lambda s: getattr(s.steps, step).status is StepStatus.REFUSED
            ),
            f"the {step} step refused",
        )
        detail = getattr(status.steps, step).detail or ""
        assert words in detail, detail
        if case.startswith("shared"):
            # names the path (which field: see test_shared_refusal_names_the_field)
            assert repr(str(setup.bad_path)) in detail, detail
        elif step == MAILBOXES:
            assert f"mailbox {setup.bad_mailbox}" in detail, detail
        else:
            assert "document_root" in detail, detail
        # billing's preflight refused on the step's behalf: billing itself did not run
        assert status.steps.billing.status is StepStatus.PENDING, status.steps
        assert f"waiting for the {step} step" in (status.steps.billing.detail or "")
        other_step = MAILBOXES if step == FILES else FILES
        assert getattr(status.steps, other_step).status is StepStatus.PENDING

        await asyncio.sleep(0.3)  # a wrongly continuing workflow would show it now
        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.DEPROVISIONING
        assert getattr(status.steps, step).status is StepStatus.REFUSED
        assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING

        now = await snapshot(stack, svc)
        assert_billing_open(now)
        assert now == target_before
        assert [await snapshot(stack, o) for o in others] == others_before
        assert _disk(hosting_root, mail_root, *setup.keep) == disk_before
        events = await audit_events(stack, svc.service_id)
        assert not {"billing_closed", "files_deleted", "mailboxes_deleted", "cancelled"} & set(
            events
        ), events
        assert done_mails(stack, svc.domain) == []
        row = await stack.pool.fetchrow(
            "select state from bajas.cancellation_requests where run_id = $1", run_id
        )
        assert row["state"] == State.DEPROVISIONING

        # the operator fixes the row and sends `retry`: the cancellation completes
        safe = await setup.fix(svc)
        await handle.signal("retry", RetryInput(by="operator"))
        result = await result_of(stack, svc.service_id)
        assert result.state is State.CANCELLED
        assert result.billing_outcome is BillingOutcome.DEBIT_CANCELLED
        assert not safe.exists()
        assert_billing_closed(await snapshot(stack, svc))
        assert [await snapshot(stack, o) for o in others] == others_before
        assert _disk(*setup.keep) == {str(t): disk_before[str(t)] for t in setup.keep}
        for sid in watched[1:]:
            assert (
                await stack.pool.fetchval("select status from services where id = $1", sid)
                == "active"
            )
    finally:
        await terminate(stack, svc.service_id)


@pytest.mark.parametrize("step", [FILES, MAILBOXES])
async def test_shared_refusal_names_the_field(stack: Stack, tmp_path: Path, step: str) -> None:
    setup = PathCase(stack, tmp_path, step, "shared_equal")
    svc = await setup.build()
    with pytest.raises(ApplicationError) as refused:
        await check_paths(
            stack.pool,
            svc.service_id,
            {FILES: stack.settings.hosting_root, MAILBOXES: stack.settings.mail_root},
            PanelPaths(stack.pool),
        )
    message = refused.value.message
    assert "shared with another service" in message
    expected = "document_root" if step == FILES else f"maildir of mailbox {setup.bad_mailbox}"
    assert expected in message, message


async def _status_if(
    stack: Stack, service_id: int, pred: Callable[[CancellationStatus], bool]
) -> CancellationStatus | None:
    status = await stack.cancellations.status(service_id)
    return status if pred(status) else None
