"""The four search attributes bajas sets (contract section 4); clusters must register them."""

from __future__ import annotations

import re

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
    the steps that read or delete a service's files and mailboxes run there. `task_queue`
    may be a release's queue: the node queue hangs off the configured one."""
    return f"{base_queue(task_queue)}-node-{server}"


# The release of the workflow code. A run continued as new goes to this release's own
# queue, which only workers of this release and later ones poll, so a worker of an
# earlier release never runs it (docs/VERSIONING.md). Raise it with every release that
# changes `Carried` or the phases; add the old number to REPLAYED_RELEASES.
RELEASE = 9
# Every release whose continued runs this code still runs: a worker polls their queues.
REPLAYED_RELEASES = (9,)
_RELEASE_SUFFIX = re.compile(r"-r[0-9]+$")


def release_queue(task_queue: str, release: int = RELEASE) -> str:
    return f"{base_queue(task_queue)}-r{release}"


def base_queue(task_queue: str) -> str:
    """The configured queue a release's queue hangs off."""
    return _RELEASE_SUFFIX.sub("", task_queue)


def polled_queues(task_queue: str) -> list[str]:
    """What a central worker of this release polls: the configured queue (new runs, and
    runs of earlier releases) and the queue of each release it runs."""
    return [task_queue, *(release_queue(task_queue, r) for r in REPLAYED_RELEASES)]
