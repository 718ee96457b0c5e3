"""All configuration in one place, read from the environment (contract section 3)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STATE_DIR = Path(".bajas")
# Secrets `bajas dev` makes and keeps under STATE_DIR.
CODE_KEY_FILE = "code.key"
PAYLOAD_KEYS_FILE = "payload.keys"
CODEC_TOKEN_FILE = "codec_token"
MIN_SECRET_LENGTH = 16


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
    # KEY[,OLD_KEY...]: keys of the HMAC that stores confirmation codes, the same on every
    # worker; the first hashes new codes, all are tried when a code is checked (rotation).
    code_hmac_key: SecretStr | None = None
    # ID:BASE64KEY[,ID:BASE64KEY...]: AES-GCM keys of the payload codec (bajas.codec).
    payload_keys: SecretStr | None = None
    codec_server_token: SecretStr | None = None
    # Origins of the Web UI(s) that call the codec server from the browser, comma-separated.
    codec_cors_origins: str = "http://localhost:8233"
    # Deprovisioning slower than this after confirmation raises the SLA alert.
    sla_limit: timedelta = timedelta(hours=20)
    # A node step no worker has taken after this long shows its node as not answering.
    node_wait: timedelta = timedelta(minutes=3)
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
    # The last copy (activities/archive.py): where node workers write the archives and the
    # API reads them (one shared volume in a fleet), how long a link works (never past
    # the deletion), and how long after the confirmation the deletion waits for a copy
    # still being built (well within the 24 hours, so below SLA_LIMIT).
    archive_root: Path = STATE_DIR / "archives"
    archive_ttl: timedelta = timedelta(days=7)
    archive_deadline: timedelta = timedelta(hours=12)
    dev_mode: bool = Field(default=False, alias="BAJAS_DEV")
    # ---- the resource kinds bajas ships (contract section 9, docs/PLUGINS.md) ----
    # Read by the kinds from `kind_env()`; unset: their resources are refused, named.
    mariadb_url: SecretStr | None = None
    postgresql_url: SecretStr | None = None
    restic_repository: str | None = None
    restic_password_file: Path | None = None
    backup_root: Path = STATE_DIR / "backups"
    restic_prune_within: timedelta = timedelta(0)
    # ---- abuse limits and the network in front of the API (docs/SECURITY.md) ----
    guess_cooldown: timedelta = timedelta(minutes=15)
    guess_max_locks: int = Field(default=3, ge=1)
    guess_max_wrong_codes: int = Field(default=15, ge=1)
    requests_per_service_hour: int = Field(default=5, ge=1)
    requests_per_customer_hour: int = Field(default=20, ge=1)
    resends_per_service_hour: int = Field(default=5, ge=1)
    resends_per_customer_hour: int = Field(default=20, ge=1)
    sign_in_delay_after: int = Field(default=5, ge=1)
    sign_in_lock_after: int = Field(default=10, ge=1)
    sign_in_lock: timedelta = timedelta(minutes=5)
    sign_in_address_factor: int = Field(default=1, ge=1)
    sign_in_concurrency: int = Field(default=2, ge=1)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    https_only: bool = False
    # None: the docs are served under `bajas dev` only.
    api_docs: bool | None = None

    _abuse_durations = field_validator("guess_cooldown", "sign_in_lock", mode="before")(
        classmethod(lambda cls, v: parse_duration(v))
    )

    @field_validator("trusted_proxies", "public_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """`a, b` in the environment; a list when built in code."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def docs_public(self) -> bool:
        return self.dev_mode if self.api_docs is None else self.api_docs

    _window = field_validator(
        "confirmation_window",
        "sla_limit",
        "node_wait",
        "archive_ttl",
        "archive_deadline",
        mode="before",
    )(classmethod(lambda cls, v: parse_duration(v)))

    @field_validator("restic_prune_within", mode="before")
    @classmethod
    def _prune_within(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("restic_prune_within")
    @classmethod
    def _within_a_day(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(hours=24):
            raise ValueError("must be between 0 and 24 hours")
        return value

    def kind_env(self) -> dict[str, str]:
        """What the resource kinds read: this process's environment (a provider's kind
        may read any variable) with the settings above as given here."""
        env = dict(os.environ)
        for name in (
            "mariadb_url",
            "postgresql_url",
            "restic_repository",
            "restic_password_file",
            "backup_root",
        ):
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[name.upper()] = str(value)
        env["RESTIC_PRUNE_WITHIN"] = str(self.restic_prune_within.total_seconds())
        env["DELETE_THREADS"] = str(self.delete_threads)
        return env

    @field_validator("archive_ttl")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("archive_deadline")
    @classmethod
    def _within_sla(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        sla_limit = info.data.get("sla_limit")
        if value <= timedelta(0) or (sla_limit is not None and value >= sla_limit):
            raise ValueError(
                f"must be positive and below SLA_LIMIT ({sla_limit}): the deletion waits"
                " for a copy being built at most this long after the confirmation"
            )
        return value

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

    def hmac_keys(self) -> list[bytes]:
        """CODE_HMAC_KEY's keys, the signing one first; only `bajas dev` (BAJAS_DEV) falls
        back to .bajas/code.key, since workers that disagree on the key refuse each other's
        codes."""
        if self.code_hmac_key is not None:
            keys = split_keys(self.code_hmac_key.get_secret_value())
            if not keys:
                raise ConfigError("CODE_HMAC_KEY holds no key: give every worker the same value")
            return [key.encode() for key in keys]
        if self.dev_mode:
            return [persistent_secret(CODE_KEY_FILE).encode()]
        raise ConfigError("CODE_HMAC_KEY is not set: give every worker the same secret value")

    def payload_keys_value(self) -> str | None:
        """PAYLOAD_KEYS, or under `bajas dev` the keys it keeps in .bajas/; None: no encryption."""
        if self.payload_keys is not None:
            return self.payload_keys.get_secret_value()
        if self.dev_mode and (STATE_DIR / PAYLOAD_KEYS_FILE).exists():
            return persistent_secret(PAYLOAD_KEYS_FILE)
        return None

    def require_codec_server_token(self) -> str:
        if self.codec_server_token is not None:
            token = self.codec_server_token.get_secret_value().strip()
            if len(token) >= MIN_SECRET_LENGTH:
                return token
            raise ConfigError(f"CODEC_SERVER_TOKEN must be at least {MIN_SECRET_LENGTH} characters")
        if self.dev_mode:
            return persistent_secret(CODEC_TOKEN_FILE)
        raise ConfigError("CODEC_SERVER_TOKEN is not set: the codec server needs a bearer token")

    def codec_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.codec_cors_origins.split(",") if o.strip()]


def split_keys(value: str) -> list[str]:
    """The comma-separated keys of a setting, blanks dropped."""
    return [key.strip() for key in value.split(",") if key.strip()]


def settings_from_env() -> Settings:
    """Settings(), with a bad value reported as one line that names its variable."""
    try:
        return Settings()
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        raise ConfigError(f"{name}: {first['msg']}") from None


def persistent_secret(
    name: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)
) -> str:
    """A secret kept in .bajas/<name> (mode 0600), made once by `make`; two processes
    starting together agree on it (the first link wins)."""
    path = STATE_DIR / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
        tmp.write_text(make())
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


class Unreachable(ConfigError):
    """A server named by the configuration does not answer: the message names the server,
    its address and the variable that gives it."""

    def __init__(self, server: str, address: str, variable: str, reason: str | None = None) -> None:
        super().__init__(
            f"cannot reach {server} at {address} ({variable})" + (f": {reason}" if reason else "")
        )
