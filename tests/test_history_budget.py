"""The history a plain cancellation leaves on the real stack (issue 21 item 2): a site of
50 files and 2 mailboxes, no resources, confirmed at once. Every event is stored by the
server for the run's retention, for every cancellation: the count is an outcome."""

from __future__ import annotations

import pytest
from temporalio.api.enums.v1 import EventType

from bajas.models import State
from tests.conftest import Stack
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in, mails_about

pytestmark = pytest.mark.integration

BUDGET = 40


@pytest.mark.xfail(
    strict=True,
    reason="67 events on release 9: the inventory's wait (a timer), the code check and the"
    " path preflight as regular activities, the 24-hour timer; the budget is not met yet",
)
async def test_a_plain_cancellation_stays_within_its_event_budget(stack: Stack) -> None:
    svc = await stack.panel.service(files=50, mailboxes=2)
    await stack.cancellations.request(svc.service_id, svc.customer_id)
    mails = await assert_eventually(
        lambda: [m for m in mails_about(stack.mail, svc.domain) if "es: " in m.body],
        "the code mail",
    )
    assert (await stack.cancellations.confirm(svc.service_id, code_in(mails[0]))).accepted
    assert (await stack.cancellations.result(svc.service_id)).state is State.CANCELLED
    history = await stack.cancellations.handle(svc.service_id).fetch_history()
    kinds = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events]
    print(f"a plain cancellation: {len(kinds)} events: {', '.join(kinds)}")
    assert len(kinds) <= BUDGET
