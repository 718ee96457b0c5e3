"""Start-up checks: each process refuses a missing secret, a bad value or a server it cannot
reach with exactly one line on stderr that names the variable, exit code 1, no traceback.

The processes are real subprocesses (`bajas ...`, `python worker.py`) in a scratch folder,
configured only through their environment. Outside `bajas dev` nothing is made up: workers
that each invented their own code key would refuse each other's codes.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from bajas.codec import new_payload_key
from bajas.config import (
    CODE_KEY_FILE,
    PAYLOAD_KEYS_FILE,
    STATE_DIR,
    ConfigError,
    Settings,
    persistent_secret,
    settings_from_env,
)
from bajas.db import database_address
from tests.helpers import REPO, free_port
from tests.helpers.processes import clean_env

TIMEOUT = 60.0
API_TOKEN = "a-panel-token-of-some-length"


@dataclass
class Run:
    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"{' '.join(self.argv)} -> {self.code}\nstdout: {self.out!r}\nstderr: {self.err!r}"


def bajas(*args: str) -> tuple[str, ...]:
    script = Path(sys.executable).with_name("bajas")
    return (str(script), *args) if script.exists() else (sys.executable, "-m", "starter.cli", *args)


PYTHON_WORKER = (sys.executable, str(REPO / "worker.py"))


async def run(argv: tuple[str, ...], cwd: Path, stdin: str = "", **env: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env({"COLUMNS": "200", "NO_COLOR": "1", **env}),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} still running after {TIMEOUT} s") from None
    assert proc.returncode is not None
    return Run(argv, proc.returncode, out.decode(), err.decode())


def one_error_line(run: Run) -> str:
    """Exit 1, exactly one stderr line `error: ...`, no traceback; returns the message."""
    assert run.code == 1, run
    assert "Traceback" not in run.err + run.out, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("error: "), run
    return lines[0].removeprefix("error: ")


def closed_pg(port: int, host: str = "127.0.0.1") -> str:
    return f"postgresql://bajas:s3cret-pw@{host}:{port}/panel"


# ---- secrets every worker must share ------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [pytest.param(bajas("worker"), id="bajas"), pytest.param(PYTHON_WORKER, id="python")]
)
async def test_worker_without_code_key_refuses_to_start(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    result = await run(argv, tmp_path, DATABASE_URL=closed_pg(free_port()))
    message = one_error_line(result)
    assert "CODE_HMAC_KEY" in message
    assert not (tmp_path / STATE_DIR).exists()  # no key made up on the side


async def test_under_bajas_dev_the_worker_keeps_a_key_in_the_state_folder(tmp_path: Path) -> None:
    port = free_port()
    result = await run(
        bajas("worker"),
        tmp_path,
        BAJAS_DEV="1",
        DATABASE_URL=closed_pg(free_port()),
        TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
    )
    # past the key check: it stops only at the server it cannot reach
    assert one_error_line(result) == f"cannot reach Temporal at 127.0.0.1:{port} (TEMPORAL_ADDRESS)"
    assert (tmp_path / STATE_DIR / CODE_KEY_FILE).read_text().strip()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("main", "not ID:BASE64KEY", id="no_key"),
        pytest.param("main:c2hvcnQ=", "40 bits", id="short"),
        pytest.param("main:%%%", "not valid base64", id="not_base64"),
    ],
)
async def test_worker_with_bad_payload_keys_refuses_to_start(
    value: str, words: str, tmp_path: Path
) -> None:
    result = await run(
        PYTHON_WORKER,
        tmp_path,
        DATABASE_URL=closed_pg(free_port()),
        CODE_HMAC_KEY="k",
        PAYLOAD_KEYS=value,
    )
    message = one_error_line(result)
    assert message.startswith("PAYLOAD_KEYS") and words in message, result


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param({"PAYLOAD_KEYS": new_payload_key("k")}, "CODEC_SERVER_TOKEN", id="no_token"),
        pytest.param(
            {"PAYLOAD_KEYS": new_payload_key("k"), "CODEC_SERVER_TOKEN": "short"},
            "CODEC_SERVER_TOKEN must be at least",
            id="short_token",
        ),
        pytest.param({"CODEC_SERVER_TOKEN": "t" * 32}, "PAYLOAD_KEYS", id="no_keys"),
    ],
)
async def test_codec_server_needs_its_token_and_keys(
    env: dict[str, str], words: str, tmp_path: Path
) -> None:
    result = await run(bajas("codec-server", "--port", str(free_port())), tmp_path, **env)
    assert words in one_error_line(result)


async def test_a_bad_value_names_its_variable(tmp_path: Path) -> None:
    result = await run(bajas("status", "--service", "1"), tmp_path, SMTP_PORT="veinticinco")
    assert one_error_line(result).startswith("SMTP_PORT: ")


# ---- servers that cannot be reached ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(bajas("worker"), id="worker"),
        pytest.param(PYTHON_WORKER, id="python_worker"),
        pytest.param(bajas("api", "--port", "0"), id="api"),
        pytest.param(bajas("status", "--service", "1"), id="status"),
        pytest.param(bajas("request", "--customer", "1", "--service", "1"), id="request"),
        pytest.param(bajas("confirm", "--service", "1", "--code", "123456"), id="confirm"),
        pytest.param(bajas("withdraw", "--service", "1"), id="withdraw"),
    ],
)
async def test_temporal_unreachable_names_address_and_variable(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    port = free_port()
    result = await run(
        argv,
        tmp_path,
        TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        DATABASE_URL=closed_pg(free_port()),
        CODE_HMAC_KEY="a-key-for-the-test",
        PANEL_API_TOKEN=API_TOKEN,
    )
    assert one_error_line(result) == f"cannot reach Temporal at 127.0.0.1:{port} (TEMPORAL_ADDRESS)"


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        pytest.param(bajas("migrate"), "", id="migrate"),
        pytest.param(
            bajas("set-password", "--customer", "1"), "una clave larga\n", id="set_password"
        ),
    ],
)
async def test_postgres_unreachable_names_address_and_variable(
    argv: tuple[str, ...], stdin: str, tmp_path: Path
) -> None:
    port = free_port()
    result = await run(argv, tmp_path, stdin, DATABASE_URL=closed_pg(port))
    message = one_error_line(result)
    assert message == f"cannot reach PostgreSQL at 127.0.0.1:{port} (DATABASE_URL)"
    assert "s3cret-pw" not in result.err


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(bajas("worker"), id="worker"),
        pytest.param(PYTHON_WORKER, id="python_worker"),
        pytest.param(bajas("api", "--port", "0"), id="api"),
    ],
)
async def test_postgres_unreachable_past_a_reachable_temporal(
    argv: tuple[str, ...], temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    port = free_port()
    result = await run(
        argv,
        tmp_path,
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        DATABASE_URL=closed_pg(port, host="localhost"),
        CODE_HMAC_KEY="a-key-for-the-test",
        PANEL_API_TOKEN=API_TOKEN,
    )
    assert one_error_line(result) == f"cannot reach PostgreSQL at localhost:{port} (DATABASE_URL)"


# ---- the settings themselves ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_inherited_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CODE_HMAC_KEY", "PAYLOAD_KEYS", "CODEC_SERVER_TOKEN", "BAJAS_DEV"):
        monkeypatch.delenv(name, raising=False)


def test_code_key_outside_dev_is_required() -> None:
    with pytest.raises(ConfigError, match="CODE_HMAC_KEY"):
        Settings().hmac_keys()
    assert Settings(code_hmac_key=SecretStr("shared")).hmac_keys() == [b"shared"]
    rotated = Settings(code_hmac_key=SecretStr(" new-key , old-key ,"))
    assert rotated.hmac_keys() == [b"new-key", b"old-key"]
    with pytest.raises(ConfigError, match="CODE_HMAC_KEY"):
        Settings(code_hmac_key=SecretStr(" , ")).hmac_keys()


def test_dev_mode_makes_each_secret_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dev = Settings(BAJAS_DEV=True)
    first = dev.hmac_keys()
    assert first == Settings(BAJAS_DEV=True).hmac_keys()
    assert dev.payload_keys_value() is None  # made by `bajas dev` only
    keys = persistent_secret(PAYLOAD_KEYS_FILE, lambda: new_payload_key("dev1"))
    assert dev.payload_keys_value() == keys
    assert Settings().payload_keys_value() is None
    assert dev.require_codec_server_token() == Settings(BAJAS_DEV=True).require_codec_server_token()
    with pytest.raises(ConfigError, match="CODEC_SERVER_TOKEN"):
        Settings().require_codec_server_token()


def test_settings_from_env_reports_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MAX", "0")
    with pytest.raises(ConfigError) as caught:
        settings_from_env()
    assert str(caught.value).startswith("DB_POOL_MAX: ") and "\n" not in str(caught.value)


def test_the_last_copy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.archive_ttl, defaults.archive_deadline) == (
        timedelta(days=7),
        timedelta(hours=12),
    )
    monkeypatch.setenv("ARCHIVE_TTL", "P2D")
    monkeypatch.setenv("ARCHIVE_DEADLINE", "3600")
    monkeypatch.setenv("ARCHIVE_ROOT", "/srv/copias")
    given = settings_from_env()
    assert (given.archive_ttl, given.archive_deadline) == (timedelta(days=2), timedelta(hours=1))
    assert given.archive_root == Path("/srv/copias")
    # the deletion may not wait for a copy past the SLA
    monkeypatch.setenv("ARCHIVE_DEADLINE", "PT21H")
    with pytest.raises(ConfigError, match=r"^ARCHIVE_DEADLINE: .*below SLA_LIMIT"):
        settings_from_env()
    monkeypatch.setenv("SLA_LIMIT", "PT22H")
    assert settings_from_env().archive_deadline == timedelta(hours=21)
    monkeypatch.setenv("ARCHIVE_TTL", "0")
    with pytest.raises(ConfigError, match="^ARCHIVE_TTL: "):
        settings_from_env()


@pytest.mark.parametrize(
    ("dsn", "address"),
    [
        ("postgresql://u:pw@db.example:6432/panel", "db.example:6432"),
        ("postgresql://u:pw@db.example/panel", "db.example:5432"),
        ("postgresql://u@[::1]:5433/panel", "[::1]:5433"),
        ("postgresql:///panel?host=/run/postgresql", "/run/postgresql"),
    ],
)
def test_database_address_hides_the_login(dsn: str, address: str) -> None:
    assert database_address(dsn) == address


def test_codec_origins_is_a_list() -> None:
    origins = Settings(codec_cors_origins="http://a:8233, https://ui.example/ ,").codec_origins()
    assert origins == ["http://a:8233", "https://ui.example"]


def test_temporal_profile_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TEMPORAL_CONFIG_FILE + TEMPORAL_PROFILE as docs/DEPLOY.md describes; env vars win."""
    from bajas.temporal_client import connect_config

    config = tmp_path / "temporal.toml"
    config.write_text(
        '[profile.prod]\naddress = "bajas.a1b2c.tmprl.cloud:7233"\n'
        'namespace = "bajas.a1b2c"\napi_key = "key-from-file"\n'
    )
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "prod")
    loaded = connect_config()
    assert loaded["target_host"] == "bajas.a1b2c.tmprl.cloud:7233"
    assert loaded["namespace"] == "bajas.a1b2c"
    assert loaded["api_key"] == "key-from-file" and loaded["tls"] is True
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "other")
    assert connect_config()["namespace"] == "other"
    monkeypatch.setenv("TEMPORAL_PROFILE", "missing")
    with pytest.raises(ConfigError, match="missing"):
        connect_config()
