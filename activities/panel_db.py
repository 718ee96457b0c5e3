"""The panel database seen by the workflow: the service check, transitions, the final mark."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import asyncpg
from temporalio import activity

from activities.audit import record, record_work
from activities.errors import path_refused
from activities.kinds import kind_classes
from activities.kinds.base import ResourceKind
from activities.kinds.order import StepOrderError, order_for
from activities.mail import unsendable_fields
from activities.resources import Listing, shared_resources
from bajas.limits import BAD_CONTACT_DATA, Limits, request_refusal
from bajas.models import (
    MAX_ID,
    FinishInput,
    PaymentMethod,
    ResourceCheckInput,
    ResourceCheckResult,
    ResourceContext,
    ResourceRecordInput,
    ResourceRef,
    ServiceCheck,
    ServiceCheckInput,
    SharedResource,
    State,
    TransitionInput,
)
from bajas.receipts import RECEIPT, build_receipt, resources_event
from bajas.run_chain import chain_run_id

# The service's resources not yet deleted (contract section 9).
RESOURCES = (
    "select id, kind, name, server from service_resources"
    " where service_id = $1 and deleted_at is null order by id"
)
# Live resources of the other services that are not cancelled with one of ours' kind,
# name and server.
OTHERS_LISTING = """
select r.kind, r.name, r.server, r.service_id
  from service_resources r join services s on s.id = r.service_id
 where r.service_id <> $1 and s.status <> 'cancelled' and r.deleted_at is null
   and (r.kind, r.name, coalesce(r.server, '')) in
       (select * from unnest($2::text[], $3::text[], $4::text[]))
"""

CONTEXT = """
select (select document_root from services where id = $1) as document_root,
       array(select maildir from mailboxes where service_id = $1 and deleted_at is null
             order by maildir) as maildirs,
       array(select distinct domain from services
              where id <> $1 and status <> 'cancelled'
                and (domain = $2 or domain like '%.' || $2 or $2 like '%.' || domain)
              order by domain) as other_domains
"""


class PanelDbActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        business_tz: str,
        confirmation_window: timedelta,
        sla_limit: timedelta,
        archive_ttl: timedelta = timedelta(days=7),
        archive_deadline: timedelta = timedelta(hours=12),
        limits: Limits | None = None,
        node_wait: timedelta = timedelta(minutes=3),
        kinds: Mapping[str, type[ResourceKind]] | None = None,
    ) -> None:
        self.pool = pool
        # The installed kinds' classes, for the order of the steps (what `after` they say).
        self.kinds = kind_classes() if kinds is None else kinds
        self.limits = limits or Limits()
        self.timing = {
            "business_tz": business_tz,
            "confirmation_window_seconds": confirmation_window.total_seconds(),
            "sla_limit_seconds": sla_limit.total_seconds(),
            "node_wait_seconds": node_wait.total_seconds(),
            "archive_ttl_seconds": archive_ttl.total_seconds(),
            "archive_deadline_seconds": archive_deadline.total_seconds(),
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
            "select s.customer_id, s.domain, s.status, s.expires_on, s.payment_method,"
            " s.server, c.name, c.email from services s join customers c on c.id = s.customer_id"
            " where s.id = $1",
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
        elif refusal := await self._refusal(data, row, chain_run_id()):
            check = ServiceCheck(accepted=False, rejection_reason=refusal, **self.timing)
        else:
            check = ServiceCheck(
                accepted=True,
                **self.timing,
                domain=row["domain"],
                expires_on=row["expires_on"],
                payment_method=PaymentMethod(row["payment_method"]),
                server=row["server"] or None,
            )
            check = await self._with_resources(check, data.service_id, row["domain"])
        state = State.AWAITING_CONFIRMATION if check.accepted else State.REJECTED
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                insert into bajas.cancellation_requests
                    (run_id, workflow_id, service_id, customer_id, requested_by, reason, state,
                     reason_code, effective)
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                on conflict (run_id) do nothing
                """,
                chain_run_id(),
                info.workflow_id,
                data.service_id,
                data.customer_id,
                data.requested_by,
                data.reason,
                state,
                data.reason_code,
                data.effective,
            )
            await record(
                conn,
                TransitionInput(
                    event="requested",
                    service_id=data.service_id,
                    customer_id=data.customer_id,
                    actor=data.requested_by,
                    to_state=state,
                    details={
                        "rejection_reason": check.rejection_reason,
                        "effective": data.effective.value,
                        "reason_code": data.reason_code and data.reason_code.value,
                        "reason": data.reason,
                    },
                ),
            )
        return check

    async def _with_resources(
        self, check: ServiceCheck, service_id: int, domain: str
    ) -> ServiceCheck:
        """The service's listed resources, their context and the order of every step; a
        kinds' order that cannot hold rejects the request (an operator's mistake)."""
        listed = await self.pool.fetch(RESOURCES, service_id)
        resources = [ResourceRef(**dict(r)) for r in listed]
        try:
            order = order_for(self.kinds, {r.kind for r in resources})
        except StepOrderError as err:
            return check.model_copy(update={"accepted": False, "rejection_reason": str(err)})
        context = await self._context(service_id, domain, resources)
        return check.model_copy(
            update={
                "resources": resources,
                "step_order": order,
                "resource_context": context,
                "shared_resources": await self._shared(service_id, resources),
            }
        )

    async def _context(
        self, service_id: int, domain: str, resources: list[ResourceRef]
    ) -> ResourceContext:
        """What the kinds may need about the service, read here so node workers need no
        panel database. `other_domains`: the live services' domains that equal, contain or
        sit under this one (what one of its certificates or zones could cover), not the
        whole panel."""
        row = await self.pool.fetchrow(CONTEXT, service_id, domain)
        return ResourceContext(
            service_id=service_id,
            domain=domain,
            document_root=row["document_root"],
            maildirs=list(row["maildirs"]),
            other_domains=list(row["other_domains"]),
            resources=resources,
        )

    async def _shared(self, service_id: int, resources: list[ResourceRef]) -> list[SharedResource]:
        if not resources:
            return []
        others = await self.pool.fetch(
            OTHERS_LISTING,
            service_id,
            [r.kind for r in resources],
            [r.name for r in resources],
            [r.server or "" for r in resources],
        )
        return shared_resources(
            resources, [Listing(r["kind"], r["name"], r["server"], r["service_id"]) for r in others]
        )

    @activity.defn(name="check_shared_resources")
    async def check_shared_resources(self, data: ResourceCheckInput) -> ResourceCheckResult:
        """Before billing (and on each operator retry): refuse, naming its kind's step, a
        resource that another service that is not cancelled lists too."""
        shared = await self._shared(data.service_id, data.resources)
        if shared:
            raise path_refused(shared[0].message, shared[0].kind)
        return ResourceCheckResult()

    @activity.defn(name="record_resources")
    async def record_resources(self, data: ResourceRecordInput) -> None:
        """`deleted_at` for every verified resource of one step, and its audit line (what the
        receipt lists), in one transaction; a retry changes nothing."""
        verified = [r for r in data.resources if r.verified]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "update service_resources set deleted_at = coalesce(deleted_at, now())"
                " where service_id = $1 and id = any($2::bigint[])",
                data.service_id,
                [r.id for r in verified],
            )
            await record_work(
                conn,
                data,
                resources_event(data.kind, data.server),
                {"resources": [r.model_dump(mode="json") for r in verified]},
            )

    async def _refusal(
        self, data: ServiceCheckInput, row: asyncpg.Record, run_id: str
    ) -> str | None:
        """A request no mail could follow, or one over the limits of docs/SECURITY.md."""
        bad = unsendable_fields(
            {"customer name": row["name"], "customer e-mail": row["email"], "domain": row["domain"]}
        )
        if bad:
            return (
                f"{BAD_CONTACT_DATA}: the {' and '.join(bad)}"
                f" {'holds' if len(bad) == 1 else 'hold'} a line break or another control"
                " character, so no mail can carry the code; fix the panel database"
            )
        refusal = await request_refusal(
            self.pool, self.limits, data.service_id, data.customer_id, run_id=run_id
        )
        return refusal.rejection_reason if refusal else None

    @activity.defn(name="record_transition")
    async def record_transition(self, entry: TransitionInput) -> None:
        await record(self.pool, entry)

    @activity.defn(name="finish_cancellation")
    async def finish_cancellation(self, data: FinishInput) -> None:
        """Mark the service cancelled once its data is gone, and in the same transaction
        write its receipt, built from the run's audit lines including this mark. A retry
        finds both lines written and changes nothing."""
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
            receipt = await build_receipt(conn, chain_run_id())
            await record_work(conn, data, RECEIPT, receipt.model_dump(mode="json"))
