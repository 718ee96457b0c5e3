"""The bajas worker: the workflow and its activities, wired from the environment.

Run as `python worker.py` or `bajas worker`. SIGTERM/SIGINT drain it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.billing import BillingActivities
from activities.codes import CodeActivities
from activities.files import FilesActivities
from activities.mail import Mailer, NoticeActivities, SmtpSettings
from activities.mailboxes import MailboxActivities
from activities.panel_db import PanelDbActivities
from activities.safety import PanelPaths
from bajas.config import Settings
from bajas.db import create_pool
from bajas.observability import ActivityLogging, setup_logging
from bajas.temporal_client import connect
from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner

log = logging.getLogger("bajas.worker")
GRACEFUL_SHUTDOWN = timedelta(seconds=30)


def activities_for(settings: Settings, pool: asyncpg.Pool) -> Sequence[Any]:
    """Every activity, each object built with what it touches in the world."""
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
    )
    codes = CodeActivities(pool, settings.hmac_key(), mailer, settings.business_tz)
    return [
        panel.check_service,
        panel.record_transition,
        panel.finish_cancellation,
        codes.issue_code,
        codes.verify_code,
        BillingActivities(
            pool,
            hosting_root=settings.hosting_root,
            mail_root=settings.mail_root,
            panel=PanelPaths(pool),
        ).close_billing,
        MailboxActivities(pool, settings.mail_root).delete_mailboxes,
        FilesActivities(pool, settings.hosting_root).delete_files,
        NoticeActivities(pool, mailer, settings.ops_email).send_notice,
    ]


def build_worker(client: Client, settings: Settings, pool: asyncpg.Pool) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[ServiceCancellation],
        workflow_runner=workflow_runner(sandboxed=settings.workflow_sandbox),
        activities=activities_for(settings, pool),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_workflow_task_polls=settings.workflow_task_pollers,
        max_concurrent_activity_task_polls=settings.activity_task_pollers,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        interceptors=[ActivityLogging()],
    )


def install_metrics(port: int | None) -> Runtime | None:
    if port is None:
        return None
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{port}"))
    )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when none is given)."""
    runtime = install_metrics(settings.metrics_port)
    client = await (connect(runtime=runtime) if runtime else connect())
    pool = await create_pool(settings.require_database_url(), max_size=settings.db_pool_max)
    stop = stop or _signal_event()
    try:
        async with build_worker(client, settings, pool):
            log.info("worker polling task queue %s", settings.temporal_task_queue)
            await stop.wait()
            log.info("worker draining (up to %s)", GRACEFUL_SHUTDOWN)
    finally:
        await pool.close()


def _signal_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main() -> None:
    settings = Settings()
    setup_logging(settings.log_format)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
