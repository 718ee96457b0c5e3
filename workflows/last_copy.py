"""The last copy of the site and mailboxes (`request_archive`): built on the data's
node, kept until its link expires or the data goes, then deleted."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.archive import ArchiveActivities
    from bajas.models import (
        PATH_REFUSED,
        AcceptedService,
        ArchiveInput,
        ArchiveState,
        ArchiveStatus,
    )
    from workflows.failures import HEARTBEAT, one_line
    from workflows.state import RETRY, SHORT, RunState

# One attempt at the last copy; before the confirmation nothing else bounds it.
ARCHIVE_TIMEOUT = timedelta(hours=12)
ARCHIVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=[PATH_REFUSED],
)


class LastCopy(RunState):
    """The copy's build, its link's life and its deletion, beside the rest of the run."""

    async def _keep_archive(
        self, service: AcceptedService, archive: ArchiveStatus, target: ArchiveInput
    ) -> None:
        """Build the copy on the node that holds the data, keep it until its link expires
        or the data goes (`_archive_gone`), then delete it; a failed build leaves none."""
        self.archive_build = workflow.start_activity_method(
            ArchiveActivities.build_archive,
            target,
            task_queue=self._node_queue(),
            start_to_close_timeout=ARCHIVE_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=ARCHIVE_RETRY,
            # a build being stopped must stop writing before its file is deleted
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"build last copy #{target.generation}",
        )
        try:
            built = await self.archive_build
        except ActivityError as err:
            archive.state = ArchiveState.FAILED
            workflow.logger.warning("last copy #%d failed: %s", target.generation, one_line(err))
        else:
            archive.state = ArchiveState.READY
            archive.bytes = built.bytes
            archive.expires_at = self._archive_expiry(service)
            self._publish()
            await self._until_expired(archive)
        await self._delete_archive(target)

    async def _kept_on(self, archive: ArchiveStatus, target: ArchiveInput) -> None:
        """A ready copy carried over from the previous run: kept as it was."""
        await self._until_expired(archive)
        await self._delete_archive(target)

    async def _until_expired(self, archive: ArchiveStatus) -> None:
        assert archive.expires_at is not None  # a ready copy has its expiry
        try:
            await workflow.wait_condition(
                lambda: self.archive_released,
                timeout=max(archive.expires_at - workflow.now(), timedelta(seconds=1)),
                timeout_summary="last copy's link expires",
            )
        except TimeoutError:
            pass
        archive.state = ArchiveState.EXPIRED
        archive.expires_at = min(archive.expires_at, workflow.now())

    async def _delete_archive(self, target: ArchiveInput) -> None:
        self._publish()
        await workflow.execute_activity_method(
            ArchiveActivities.delete_archive,
            target,
            task_queue=self._node_queue(),
            start_to_close_timeout=SHORT,
            retry_policy=RETRY,
            summary=f"delete last copy #{target.generation}",
        )

    def _archive_expiry(self, service: AcceptedService) -> datetime:
        """ARCHIVE_TTL from now, but never past the deletion: at the latest, the SLA
        after the confirmation, or after the last moment to confirm."""
        start = self.confirmed_at or (self.code.expires_at if self.code else workflow.now())
        return min(workflow.now() + service.archive_ttl, start + service.sla_limit)

    async def _archive_settled(self) -> None:
        """Before the deletion: a copy still being built gets until ARCHIVE_DEADLINE after
        the confirmation, well within the 24 hours; then it is stopped and fails."""
        archive, service = self.archive, self.service
        if archive is None or archive.state is not ArchiveState.BUILDING or service is None:
            return
        deadline = (self.confirmed_at or workflow.now()) + service.archive_deadline
        try:
            await workflow.wait_condition(
                lambda: archive.state is not ArchiveState.BUILDING,
                timeout=max(deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary="deadline of the last copy",
            )
        except TimeoutError:
            workflow.logger.warning("last copy not built by its deadline: stopped")
            assert self.archive_build is not None
            self.archive_build.cancel()
            await workflow.wait_condition(lambda: archive.state is not ArchiveState.BUILDING)

    async def _archive_gone(self) -> None:
        """The copy goes with the rest (a build still running is stopped first); after
        this no archive of this run is left on disk."""
        if self.archive_work is None:
            return
        self.archive_released = True
        if self.archive_build is not None and not self.archive_build.done():
            self.archive_build.cancel()
        await self.archive_work

    def _archive_handed_over(self) -> bool:
        """Whether the copy can pass to the next run: none, or one only waiting for its
        link to expire (a build or a deletion in flight finishes here first)."""
        archive, work = self.archive, self.archive_work
        if archive is None or work is None or work.done():
            return True
        return archive.state is ArchiveState.READY
