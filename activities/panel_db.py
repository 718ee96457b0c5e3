"""The panel database seen by the workflow: the service check, transitions, the final mark."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from temporalio import activity

from activities.audit import record, record_work
from bajas.models import (
    MAX_ID,
    FinishInput,
    PaymentMethod,
    ServiceCheck,
    ServiceCheckInput,
    State,
    TransitionInput,
)


class PanelDbActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        business_tz: str,
        confirmation_window: timedelta,
        sla_limit: timedelta,
    ) -> None:
        self.pool = pool
        self.timing = {
            "business_tz": business_tz,
            "confirmation_window_seconds": confirmation_window.total_seconds(),
            "sla_limit_seconds": sla_limit.total_seconds(),
        }

    @activity.defn(name="check_service")
    async def check_service(self, data: ServiceCheckInput) -> ServiceCheck:
        """Decide whether this customer may cancel this service, and open the request row."""
        info = activity.info()
        if not (0 < data.service_id <= MAX_ID and 0 < data.customer_id <= MAX_ID):
            # Not a bigint: no such service, and nothing to write down either.
            activity.logger.warning("service check with ids out of range refused")
            return ServiceCheck(accepted=False, rejection_reason="unknown service", **self.timing)
        row = await self.pool.fetchrow(
            "select customer_id, domain, status, expires_on, payment_method"
            " from services where id = $1",
            data.service_id,
        )
        if row is None:
            check = ServiceCheck(accepted=False, rejection_reason="unknown service", **self.timing)
        elif row["customer_id"] != data.customer_id:
            check = ServiceCheck(
                accepted=False, rejection_reason="not the customer's service", **self.timing
            )
        elif row["status"] == "cancelled":
            check = ServiceCheck(
                accepted=False, rejection_reason="service already cancelled", **self.timing
            )
        else:
            check = ServiceCheck(
                accepted=True,
                **self.timing,
                domain=row["domain"],
                expires_on=row["expires_on"],
                payment_method=PaymentMethod(row["payment_method"]),
            )
        state = State.AWAITING_CONFIRMATION if check.accepted else State.REJECTED
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                insert into bajas.cancellation_requests
                    (run_id, workflow_id, service_id, customer_id, requested_by, reason, state)
                values ($1, $2, $3, $4, $5, $6, $7)
                on conflict (run_id) do nothing
                """,
                info.workflow_run_id,
                info.workflow_id,
                data.service_id,
                data.customer_id,
                data.requested_by,
                data.reason,
                state,
            )
            await record(
                conn,
                TransitionInput(
                    event="requested",
                    service_id=data.service_id,
                    customer_id=data.customer_id,
                    actor=data.requested_by,
                    to_state=state,
                    details={"rejection_reason": check.rejection_reason},
                ),
            )
        return check

    @activity.defn(name="record_transition")
    async def record_transition(self, entry: TransitionInput) -> None:
        await record(self.pool, entry)

    @activity.defn(name="finish_cancellation")
    async def finish_cancellation(self, data: FinishInput) -> None:
        """Mark the service cancelled once its data is gone."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                update services
                   set status = 'cancelled', auto_renew = false,
                       cancelled_at = coalesce(cancelled_at, now())
                 where id = $1
                """,
                data.service_id,
            )
            await record_work(
                conn,
                data,
                "cancelled",
                {"files_deleted": data.files_deleted, "mailboxes_deleted": data.mailboxes_deleted},
                billing_outcome=data.billing_outcome,
                from_state=State.DEPROVISIONING,
                to_state=State.CANCELLED,
            )
