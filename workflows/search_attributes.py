"""The four search attributes bajas sets (contract section 4); clusters must register them."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

SERVICE_ID = SearchAttributeKey.for_keyword("ServiceId")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
CANCELLATION_STATE = SearchAttributeKey.for_keyword("CancellationState")
SLA_AT_RISK = SearchAttributeKey.for_bool("SlaAtRisk")

ALL = (SERVICE_ID, CUSTOMER_ID, CANCELLATION_STATE, SLA_AT_RISK)

WORKFLOW_TYPE = "ServiceCancellation"


def workflow_id_for(service_id: int) -> str:
    return f"service-cancellation-{service_id}"


def node_task_queue(task_queue: str, server: str) -> str:
    """The queue of the node worker on hosting server `server` (`bajas worker --node`):
    the steps that read or delete a service's files and mailboxes run there."""
    return f"{task_queue}-node-{server}"
