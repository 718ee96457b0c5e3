"""What the server-footprint kinds share: names checked without I/O, commands run as the
contract says (split as a POSIX shell would, run without a shell), and errors in one line."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from activities.kinds.base import NotConfigured

# A configuration file's or a certificate's name: one path component, no hidden file.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
# A login name as useradd accepts it by default (shadow's NAME_REGEX).
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
# Below this uid live the system's accounts (contract section 9); 65534 and up are
# nobody/nogroup and the overflow ids, never a customer's.
FIRST_UID, LAST_UID = 1000, 65533
COMMAND_TIMEOUT = 60.0
LINE_LIMIT = 400


def file_name_error(name: str) -> str | None:
    if FILE_NAME.fullmatch(name) is None or ".." in name:
        return "not a plain file name (letters, digits, . _ @ + -, no folder)"
    return None


def user_name_error(name: str) -> str | None:
    if USER_NAME.fullmatch(name) is None:
        return "not a user name"
    if name == "root":
        return "root is a system account"
    return None


def account(name: str) -> pwd.struct_passwd | None:
    """The system user of that name, None when there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def uid_error(uid: int) -> str | None:
    if uid == os.geteuid():
        return f"uid {uid} is the account bajas runs as"
    if uid < FIRST_UID:
        return f"uid {uid} is below {FIRST_UID}: a system account"
    if uid > LAST_UID:
        return f"uid {uid} is an overflow id (nobody), never a customer's"
    return None


def one_line(text: str) -> str:
    """Output of a command as one line of the step's error."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= LINE_LIMIT else line[: LINE_LIMIT - 1] + "…"


@dataclass(frozen=True)
class Ran:
    code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def folder_error(setting: str, folder: Path) -> str | None:
    """A folder setting that names no folder would make every resource look gone."""
    return None if folder.is_dir() else f"{setting} ({folder}) is not a folder on this server"


def program_error(setting: str, words: list[str]) -> str | None:
    if shutil.which(words[0]) is None:
        return f"{setting}: {words[0]} is not installed on this server"
    return None


def command_setting(env: Mapping[str, str], setting: str, default: str | None) -> list[str]:
    """A command setting as words; NotConfigured when unset without default or empty."""
    value = env.get(setting, default)
    words = shlex.split(value) if value else []
    if not words:
        raise NotConfigured(f"{setting} is not set")
    return words


async def run(words: list[str], stdin: bytes | None = None) -> Ran:
    """Run without a shell; stdout and stderr together, as the operator would read them."""
    try:
        process = await asyncio.create_subprocess_exec(
            *words,
            # Messages in English whatever the worker's locale: some are matched.
            env={**os.environ, "LC_ALL": "C"},
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as err:
        return Ran(127, f"{words[0]}: {err.strerror or err}")
    try:
        out, _ = await asyncio.wait_for(process.communicate(stdin), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return Ran(124, f"{shlex.join(words)}: no answer after {COMMAND_TIMEOUT:.0f} s")
    except asyncio.CancelledError:  # the attempt is over: leave no command behind
        process.kill()
        raise
    return Ran(process.returncode or 0, out.decode(errors="replace"))
