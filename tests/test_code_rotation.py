"""Rotating CODE_HMAC_KEY (contract section 9): a code mailed under the old key is still
accepted once the new key leads the list, and a new code is hashed with the new key.

The code activities alone in an ActivityEnvironment, on the session's PostgreSQL and SMTP
sink: what is judged is the code in the mail the customer got.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.testing import ActivityEnvironment

from activities.codes import CodeActivities
from activities.mail import Mailer, SmtpSettings
from bajas.config import Settings
from bajas.dev.mailsink import MailSink
from bajas.models import BillingOutcome, IssueCodeInput, VerifyCodeInput
from tests.helpers.mail import MailServer, code_in, mails_about
from tests.helpers.panel import Panel, ServiceFixture

pytestmark = pytest.mark.integration

OLD, NEW = "old-key-" + uuid.uuid4().hex, "new-key-" + uuid.uuid4().hex


class Codes:
    """The code activities of one workflow run, as configured by CODE_HMAC_KEY `setting`."""

    def __init__(
        self, pool: asyncpg.Pool, mail: MailServer[MailSink], run_id: str, setting: str
    ) -> None:
        mailer = Mailer(SmtpSettings(host=mail.host, port=mail.port, sender="bajas@test"))
        keys = Settings(code_hmac_key=setting).hmac_keys()
        self.activities = CodeActivities(pool, keys, mailer, "UTC")
        self.env = ActivityEnvironment()
        self.env.info = dataclasses.replace(self.env.info, workflow_run_id=run_id)

    async def issue(self, svc: ServiceFixture, generation: int) -> None:
        data = IssueCodeInput(
            service_id=svc.service_id,
            customer_id=svc.customer_id,
            generation=generation,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            billing_preview=BillingOutcome.NO_FURTHER_CHARGES,
        )
        await self.env.run(self.activities.issue_code, data)

    async def accepts(self, generation: int, code: str) -> bool:
        data = VerifyCodeInput(generation=generation, code=code)
        return (await self.env.run(self.activities.verify_code, data)).accepted


async def test_a_rotated_key_accepts_the_codes_already_mailed(
    pool: asyncpg.Pool, panel: Panel, mail_server: MailServer[MailSink]
) -> None:
    svc = await panel.service(files=0, mailboxes=0)
    run_id = str(uuid.uuid4())
    await Codes(pool, mail_server, run_id, OLD).issue(svc, 1)
    [mailed_before] = mails_about(mail_server.sink, svc.domain)
    old_code = code_in(mailed_before)

    rotated = Codes(pool, mail_server, run_id, f"{NEW},{OLD}")
    assert await rotated.accepts(1, old_code)

    await rotated.issue(svc, 2)
    new_code = code_in(mails_about(mail_server.sink, svc.domain)[-1])
    # the new code is hashed with the new key alone: the old key does not check it
    assert not await Codes(pool, mail_server, run_id, OLD).accepts(2, new_code)
    assert await Codes(pool, mail_server, run_id, NEW).accepts(2, new_code)
    # and once the old key is dropped, the code mailed under it no longer works
    assert not await Codes(pool, mail_server, run_id, NEW).accepts(1, old_code)
