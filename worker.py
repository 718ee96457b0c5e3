"""The bajas worker: the workflow and its activities, wired from the environment.

Run as `python worker.py` or `bajas worker`. SIGTERM/SIGINT drain it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Worker

from activities.archive import ArchiveActivities
from activities.billing import BillingActivities
from activities.codes import CodeActivities
from activities.files import FilesActivities
from activities.inventory import InventoryActivities
from activities.kinds import load_kinds
from activities.kinds.base import ResourceKind
from activities.mail import Mailer, NoticeActivities, SmtpSettings
from activities.mailboxes import MailboxActivities
from activities.panel_db import PanelDbActivities
from activities.resources import ResourceActivities
from activities.safety import PanelPaths, PreflightActivities
from bajas import tracing
from bajas.config import ConfigError, Settings, settings_from_env
from bajas.db import create_pool
from bajas.limits import Limits
from bajas.metrics import ActivityMetrics, BajasMetrics
from bajas.observability import ActivityLogging, setup_logging
from bajas.run_chain import RunChain
from bajas.temporal_client import connect, data_converter
from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner
from workflows.search_attributes import node_task_queue, polled_queues

log = logging.getLogger("bajas.worker")
GRACEFUL_SHUTDOWN = timedelta(seconds=30)


def node_activities_for(
    settings: Settings, pool: asyncpg.Pool, node: str | None = None
) -> list[Any]:
    """The steps that read or delete files and mailboxes: they run where the data is
    (`node` names the hosting server, None on a central worker)."""
    panel = PanelPaths(pool)
    threads = settings.delete_threads
    roots = {"hosting_root": settings.hosting_root, "mail_root": settings.mail_root}
    kinds = load_kinds(settings.kind_env())
    archive = ArchiveActivities(
        pool, settings.hosting_root, settings.mail_root, settings.archive_root, panel, kinds
    )
    return [
        PreflightActivities(pool, **roots, panel=panel, threads=threads).preflight_paths,
        InventoryActivities(pool, **roots, threads=threads).take_inventory,
        MailboxActivities(
            pool, settings.mail_root, panel=panel, threads=threads, node=node
        ).delete_mailboxes,
        FilesActivities(
            pool, settings.hosting_root, panel=panel, threads=threads, node=node
        ).delete_files,
        archive.build_archive,
        archive.delete_archive,
        *resource_activities(kinds),
    ]


def resource_activities(kinds: Mapping[str, ResourceKind]) -> list[Any]:
    """The resource steps over every kind installed here (entry points `bajas.resources`),
    each built with this worker's environment (contract section 9)."""
    for name, kind in sorted(kinds.items()):
        # a kind this worker cannot handle refuses its resources, naming the setting
        log.info("resource kind %s: %s", name, kind.configuration_error() or "ready")
    resources = ResourceActivities(kinds)
    return [
        resources.inventory_resources,
        resources.preflight_resources,
        resources.delete_resources,
    ]


def activities_for(settings: Settings, pool: asyncpg.Pool) -> Sequence[Any]:
    """Every activity, each object built with what it touches in the world: a central
    worker also runs the node steps of the services that name no server."""
    limits = Limits.from_settings(settings)
    mailer = Mailer(
        SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            timeout=settings.smtp_timeout,
        )
    )
    panel = PanelDbActivities(
        pool,
        business_tz=settings.business_tz,
        confirmation_window=settings.confirmation_window,
        sla_limit=settings.sla_limit,
        node_wait=settings.node_wait,
        archive_ttl=settings.archive_ttl,
        archive_deadline=settings.archive_deadline,
        limits=limits,
    )
    codes = CodeActivities(pool, settings.hmac_keys(), mailer, settings.business_tz, limits)
    return [
        panel.check_service,
        panel.record_transition,
        panel.finish_cancellation,
        panel.check_shared_resources,
        panel.record_resources,
        codes.issue_code,
        codes.verify_code,
        BillingActivities(
            pool,
            hosting_root=settings.hosting_root,
            mail_root=settings.mail_root,
            panel=PanelPaths(pool),
            threads=settings.delete_threads,
        ).close_billing,
        NoticeActivities(
            pool, mailer, settings.ops_email, business_tz=settings.business_tz
        ).send_notice,
        *node_activities_for(settings, pool),
    ]


class Workers:
    """One worker per queue of a central worker (`polled_queues`): the configured one and
    each release's, run and drained together like one `Worker`."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = list(workers)
        self.task_queue = self.workers[0].task_queue

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.workers))

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers))

    async def __aenter__(self) -> Workers:
        for worker in self.workers:
            await worker.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in reversed(self.workers):
            await worker.__aexit__(None, None, None)


def central_workers(client: Client, task_queue: str, **options: Any) -> Workers:
    """The workflow and its activities on every queue this release polls."""
    return Workers([Worker(client, task_queue=q, **options) for q in polled_queues(task_queue)])


def build_worker(
    client: Client,
    settings: Settings,
    pool: asyncpg.Pool,
    node: str | None = None,
    metrics: BajasMetrics | None = None,
) -> Worker | Workers:
    """The central worker (workflow, billing, mail and the node steps of services without
    a server), or with `node` the worker of one hosting server: only its node steps.
    `metrics`: where bajas's own metrics are counted (bajas.metrics), if anywhere."""
    interceptors: list[Interceptor] = [ActivityLogging(), RunChain()]
    if metrics is not None:
        interceptors.append(ActivityMetrics(metrics))
    if node is not None:
        return Worker(
            client,
            task_queue=node_task_queue(settings.temporal_task_queue, node),
            activities=node_activities_for(settings, pool, node),
            max_concurrent_activities=settings.max_concurrent_activities,
            max_concurrent_activity_task_polls=settings.activity_task_pollers,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            interceptors=interceptors,
        )
    return central_workers(
        client,
        settings.temporal_task_queue,
        workflows=[ServiceCancellation],
        workflow_runner=workflow_runner(sandboxed=settings.workflow_sandbox),
        activities=activities_for(settings, pool),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_workflow_task_polls=settings.workflow_task_pollers,
        max_concurrent_activity_task_polls=settings.activity_task_pollers,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        interceptors=interceptors,
    )


def install_metrics(port: int | None) -> Runtime | None:
    if port is None:
        return None
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{port}"))
    )


def check_settings(settings: Settings, node: str | None = None) -> None:
    """Refuse to start without what every worker must share (ConfigError, one line):
    a worker with its own code key would refuse the codes the others mail. A node worker
    handles no codes."""
    settings.require_database_url()
    if node is None:
        settings.hmac_keys()
    data_converter(settings)  # PAYLOAD_KEYS, when set, must parse


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, node: str | None = None
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when none is given)."""
    check_settings(settings, node)
    tracing.setup("bajas-worker" if node is None else "bajas-node-worker")
    runtime = install_metrics(settings.metrics_port)
    client = await (connect(settings, runtime=runtime) if runtime else connect(settings))
    pool = await create_pool(settings.require_database_url(), max_size=settings.db_pool_max)
    metrics = BajasMetrics(runtime.metric_meter) if runtime else None
    stop = stop or _signal_event()
    try:
        async with build_worker(client, settings, pool, node, metrics) as worker:
            log.info("worker polling task queue %s", worker.task_queue)
            if metrics is None:
                await stop.wait()
            else:
                await metrics.watch(client if node is None else None, stop)
            log.info("worker draining (up to %s)", GRACEFUL_SHUTDOWN)
    finally:
        await pool.close()
        tracing.shutdown()


def _signal_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main() -> None:
    try:
        settings = settings_from_env()
        setup_logging(settings.log_format)
        asyncio.run(run_worker(settings))
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()
        os._exit(1)  # a client connected before the failure can abort interpreter shutdown


if __name__ == "__main__":
    main()
