"""All configuration in one place, read from the environment (contract section 3)."""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path(".bajas")


def parse_duration(value: Any) -> Any:
    """Accept plain seconds ("86400", 90) besides ISO 8601 durations ("PT24H")."""
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return timedelta(seconds=float(value))
    return value


class Settings(BaseSettings):
    """Environment of contract section 3, plus the project's own optional knobs.

    TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (and API key, TLS, profiles) are read by
    temporalio.envconfig in `bajas.temporal_client`, exactly as the `temporal` CLI does.
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    temporal_task_queue: str = "service-cancellation"
    database_url: str | None = None
    smtp_host: str = "localhost"
    smtp_port: int = 1025
    smtp_from: str = "bajas@localhost"
    smtp_timeout: float = 10.0
    hosting_root: Path = STATE_DIR / "www"
    mail_root: Path = STATE_DIR / "mail"
    business_tz: str = "America/Argentina/Buenos_Aires"
    confirmation_window: timedelta = timedelta(seconds=86400)
    panel_api_token: SecretStr | None = None
    # Key of the HMAC that stores confirmation codes; shared by every worker.
    code_hmac_key: SecretStr | None = None
    # Deprovisioning slower than this after confirmation raises the SLA alert.
    sla_limit: timedelta = timedelta(hours=20)
    ops_email: str | None = None
    metrics_port: int | None = None
    log_format: str = Field(default="text", pattern="^(text|json)$")
    panel_session_secret: SecretStr | None = None
    db_pool_max: int = Field(default=10, ge=1)
    max_concurrent_activities: int = Field(default=50, ge=1)
    # Run the workflow in the SDK's sandbox (the tests always do; see workflows/sandbox.py).
    workflow_sandbox: bool = False
    # Pollers per worker: more keep a worker busy when the server is a round trip away.
    workflow_task_pollers: int = Field(default=5, ge=2)
    activity_task_pollers: int = Field(default=5, ge=1)
    # Workflows kept in worker memory; more than this waiting are replayed when touched.
    max_cached_workflows: int = Field(default=2000, ge=0)
    # Threads of the deletion engine (activities/deletion.py), per worker (contract section 8).
    delete_threads: int = Field(default=4, ge=1)
    dev_mode: bool = Field(default=False, alias="BAJAS_DEV")

    _window = field_validator("confirmation_window", "sla_limit", mode="before")(
        classmethod(lambda cls, v: parse_duration(v))
    )

    @field_validator("business_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        ZoneInfo(value)
        return value

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (only `bajas dev` provides one by itself)")
        return self.database_url

    def hmac_key(self) -> bytes:
        """The code key: CODE_HMAC_KEY, else one kept in .bajas/code.key (single machine)."""
        if self.code_hmac_key is not None:
            return self.code_hmac_key.get_secret_value().encode()
        return persistent_secret("code.key").encode()


def persistent_secret(name: str) -> str:
    """A random secret kept in .bajas/<name> (mode 0600), made once; two processes
    starting together agree on it (the first link wins)."""
    path = STATE_DIR / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


class ConfigError(Exception):
    """A configuration value is missing or wrong; shown to the operator as one line."""
