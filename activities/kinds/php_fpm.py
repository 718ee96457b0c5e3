"""`php_fpm_pool`: the pool's file in PHP_FPM_POOL_DIR, removed after the site stops
serving and before the files go; gone once PHP-FPM has reloaded (PHP_FPM_RELOAD).

A pool PHP-FPM cannot parse keeps it from starting again, so where PHP_FPM_TEST is set
(`php-fpm8.2 -t`) the configuration is tested first; a test or a reload that fails puts
the pool's file back and stops the step, as for nginx."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from activities.kinds._common import command_setting
from activities.kinds.base import FILES
from activities.kinds.config_files import ReloadedConfigKind
from activities.kinds.nginx import NginxSite


class PhpFpmPool(ReloadedConfigKind):
    kind = "php_fpm_pool"
    settings: ClassVar[tuple[str, ...]] = ("PHP_FPM_POOL_DIR", "PHP_FPM_RELOAD", "PHP_FPM_TEST")
    before = frozenset({FILES})
    # The site stops sending requests first: a pool gone under a live site answers 502.
    after = frozenset({NginxSite.kind})
    server_label = "PHP-FPM"

    def configuration_error(self) -> str | None:
        for setting in ("PHP_FPM_POOL_DIR", "PHP_FPM_RELOAD"):
            if not self.env.get(setting, "").strip():
                return f"{setting} is not set"
        return None

    def places(self, name: str) -> list[Path]:
        return [Path(self.env["PHP_FPM_POOL_DIR"]) / name]

    def test_command(self) -> list[str] | None:
        return (
            command_setting(self.env, "PHP_FPM_TEST", None)
            if self.env.get("PHP_FPM_TEST")
            else None
        )

    def reload_command(self) -> list[str]:
        return command_setting(self.env, "PHP_FPM_RELOAD", None)
