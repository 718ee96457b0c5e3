"""What the API and the panel both show: a service with its cancellation, the billing preview."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from bajas import texts
from bajas.config import Settings
from bajas.models import ArchiveLink, BillingOutcome, CancellationStatus, State
from starter.api import store
from starter.api.errors import TemporalUnavailable
from starter.api.schemas import BillingPreview, CancellationView, ServiceView
from starter.client import CancellationClient, CancellationError, CancellationNotFound
from workflows.rules import auto_debit_cutoff, outcome_at
from workflows.search_attributes import workflow_id_for

QUERY_TIMEOUT = 10.0


def billing_preview(
    service: store.Service, settings: Settings, outcome: BillingOutcome | None = None
) -> BillingPreview:
    """The outcome the workflow gave, or what confirming right now would give."""
    if outcome is None:
        outcome = outcome_at(
            datetime.now(UTC), settings.business_tz, service.expires_on, service.payment_method
        )
    return BillingPreview(
        outcome=outcome,
        text=texts.outcome_text(outcome),
        debit_warning=texts.debit_warning(
            auto_debit_cutoff(service.expires_on, service.payment_method)
        ),
    )


def cancellation_view(
    status: CancellationStatus, service: store.Service, settings: Settings
) -> CancellationView:
    """The status as the API shows it: every field of the query, the preview spelled out."""
    preview = (
        billing_preview(service, settings, status.billing_preview)
        if status.billing_preview is not None
        else None
    )
    return CancellationView.model_validate(
        {
            **status.model_dump(exclude={"billing_preview"}),
            "workflow_id": workflow_id_for(status.service_id),
            "billing_preview": preview,
        }
    )


async def query_status(cancellations: CancellationClient, service_id: int) -> CancellationStatus:
    """The `status` query, bounded in time, a last copy past its expiry read as expired;
    CancellationNotFound when there is no workflow."""
    try:
        status = await asyncio.wait_for(cancellations.status(service_id), QUERY_TIMEOUT)
    except TimeoutError as err:
        raise TemporalUnavailable("Temporal did not answer the status query in time") from err
    except CancellationNotFound:
        raise
    except CancellationError as err:
        raise TemporalUnavailable(str(err)) from err
    if status.archive is not None:
        status.archive = status.archive.as_of(datetime.now(UTC))
    return status


async def archive_link_of(
    cancellations: CancellationClient, service: store.Service
) -> ArchiveLink | None:
    """The last copy of this customer's service, with its link's token; None without one."""
    try:
        link = await asyncio.wait_for(
            cancellations.archive_link(service.id, service.customer_id), QUERY_TIMEOUT
        )
    except TimeoutError as err:
        raise TemporalUnavailable("Temporal did not answer the archive query in time") from err
    except CancellationNotFound:
        return None
    except CancellationError as err:
        raise TemporalUnavailable(str(err)) from err
    if link is not None:
        link.archive = link.archive.as_of(datetime.now(UTC))
    return link


async def status_of(
    cancellations: CancellationClient, service: store.Service
) -> CancellationStatus | None:
    """The latest cancellation of this customer's service, whatever its state, or None."""
    try:
        status = await query_status(cancellations, service.id)
    except CancellationNotFound:
        return None
    return status if status.customer_id == service.customer_id else None


async def in_progress(
    cancellations: CancellationClient, service: store.Service, latest: store.LatestRequest | None
) -> CancellationStatus | None:
    """The cancellation still running for the service: the request row says which to ask."""
    if latest is None or not latest.in_progress or service.status == "cancelled":
        return None
    status = await status_of(cancellations, service)
    if status is None or status.state.is_final:
        return None
    return status


async def services_with_cancellations(
    pool: asyncpg.Pool,
    cancellations: CancellationClient,
    customer_id: int,
) -> list[tuple[store.Service, CancellationStatus | None]]:
    services = await store.services_of(pool, customer_id)
    latest = await store.latest_requests(pool, [s.id for s in services])
    statuses = await asyncio.gather(
        *(in_progress(cancellations, s, latest.get(s.id)) for s in services)
    )
    return list(zip(services, statuses, strict=True))


def service_view(
    service: store.Service, status: CancellationStatus | None, settings: Settings
) -> ServiceView:
    return ServiceView(
        id=service.id,
        domain=service.domain,
        plan=service.plan,
        status=service.status,
        expires_on=service.expires_on,
        payment_method=service.payment_method,
        auto_renew=service.auto_renew,
        cancelled_at=service.cancelled_at,
        cancellation=cancellation_view(status, service, settings) if status else None,
    )


def is_pending(status: CancellationStatus | None) -> bool:
    return status is not None and status.state is State.AWAITING_CONFIRMATION
