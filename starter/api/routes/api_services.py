"""`GET /api/customers/{cid}/services`: what the panel database and Temporal say of each."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from starter.api.cancellations import service_view, services_with_cancellations
from starter.api.deps import ClientDep, CustomerDep, PoolDep, SettingsDep, require_token
from starter.api.schemas import ErrorBody, ServiceList

router = APIRouter(
    prefix="/api/customers/{cid}",
    tags=["services"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


@router.get("/services", response_model=ServiceList)
async def list_services(
    customer: CustomerDep, pool: PoolDep, cancellations: ClientDep, settings: SettingsDep
) -> ServiceList:
    """The customer's services with their status and any cancellation in progress."""
    pairs = await services_with_cancellations(pool, cancellations, customer.id)
    return ServiceList(
        customer_id=customer.id,
        services=[service_view(s, status, settings) for s, status in pairs],
    )
