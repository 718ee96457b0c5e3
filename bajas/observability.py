"""Structured logs: every activity attempt logged with its workflow and service ids."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

log = logging.getLogger("bajas.activity")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with whatever `extra` fields the record carries."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _LoggingInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        service_id = next(
            (getattr(arg, "service_id", None) for arg in input.args if hasattr(arg, "service_id")),
            None,
        )
        fields = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity": info.activity_type,
            "attempt": info.attempt,
            "service_id": service_id,
        }
        started = time.monotonic()
        log.debug("activity %s started", info.activity_type, extra=fields)
        try:
            result = await super().execute_activity(input)
        except BaseException as err:
            log.warning(
                "activity %s failed: %s",
                info.activity_type,
                err,
                extra={**fields, "seconds": round(time.monotonic() - started, 3)},
            )
            raise
        log.info(
            "activity %s done",
            info.activity_type,
            extra={**fields, "seconds": round(time.monotonic() - started, 3)},
        )
        return result


class ActivityLogging(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LoggingInbound(next)
