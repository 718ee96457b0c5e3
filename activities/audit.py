"""The append-only audit trail and the request row, written inside the caller's transaction."""

from __future__ import annotations

import json
from typing import Protocol

import asyncpg
from temporalio import activity

from bajas.models import BillingOutcome, Details, State, TransitionInput
from bajas.run_chain import chain_run_id

# The actor of every line bajas writes about its own work.
BAJAS = "bajas"


class ForService(Protocol):
    """Any activity input naming a service and its customer."""

    service_id: int
    customer_id: int


async def record(conn: asyncpg.Connection | asyncpg.Pool, entry: TransitionInput) -> None:
    """Append one audit line (once per run and event) and move the request row along,
    in one statement: atomic on its own, one round trip."""
    info = activity.info()
    await conn.execute(
        """
        with audit as (
            insert into bajas.audit_trail (run_id, workflow_id, event, service_id, customer_id,
                                           actor, from_state, to_state, billing_outcome, details)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
            on conflict (run_id, event) do nothing
        )
        update bajas.cancellation_requests
           set state = $8,
               billing_outcome = coalesce($9, billing_outcome),
               confirmed_at = case when $8 = any($11::text[]) then coalesce(confirmed_at, now())
                                   else confirmed_at end,
               finished_at = case when $12 then coalesce(finished_at, now()) else finished_at end,
               updated_at = now()
         where run_id = $1 and $8::text is not null
        """,
        chain_run_id(),
        info.workflow_id,
        entry.event,
        entry.service_id,
        entry.customer_id,
        entry.actor,
        entry.from_state,
        entry.to_state,
        entry.billing_outcome,
        json.dumps(entry.details),
        # the states a confirmation leads to
        [State.DEPROVISIONING, State.SCHEDULED],
        entry.to_state is not None and entry.to_state.is_final,
    )


async def record_work(
    conn: asyncpg.Connection | asyncpg.Pool,
    data: ForService,
    event: str,
    details: Details,
    *,
    billing_outcome: BillingOutcome | None = None,
    from_state: State | None = None,
    to_state: State | None = None,
) -> None:
    """The audit line of something bajas itself did for the service named in `data`."""
    await record(
        conn,
        TransitionInput(
            event=event,
            service_id=data.service_id,
            customer_id=data.customer_id,
            actor=BAJAS,
            from_state=from_state,
            to_state=to_state,
            billing_outcome=billing_outcome,
            details=details,
        ),
    )
