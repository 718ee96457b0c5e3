"""`php_fpm_pool`: the pool's file in PHP_FPM_POOL_DIR, removed after the site stops
serving and before the files go; gone once PHP-FPM has reloaded (PHP_FPM_RELOAD).

A pool PHP-FPM cannot parse keeps it from starting again, so where PHP_FPM_TEST is set
(`php-fpm8.2 -t`) the configuration is tested first; a test or a reload that fails puts
the pool's file back and stops the step, as for nginx."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from activities.kinds._common import command_setting
from activities.kinds.base import FILES, NotConfigured
from activities.kinds.config_files import ReloadedConfigKind
from activities.kinds.nginx import NginxSite


class PhpFpmPool(ReloadedConfigKind):
    kind = "php_fpm_pool"
    settings: ClassVar[tuple[str, ...]] = ("PHP_FPM_POOL_DIR", "PHP_FPM_RELOAD", "PHP_FPM_TEST")
    before = frozenset({FILES})
    # The site stops sending requests first: a pool gone under a live site answers 502.
    after = frozenset({NginxSite.kind})
    server_label = "PHP-FPM"

    def folders(self) -> dict[str, Path]:
        return {"PHP_FPM_POOL_DIR": Path(self.env.get("PHP_FPM_POOL_DIR") or "")}

    def commands(self) -> dict[str, list[str] | None]:
        if not self.env.get("PHP_FPM_POOL_DIR", "").strip():
            raise NotConfigured("PHP_FPM_POOL_DIR is not set")
        test = self.env.get("PHP_FPM_TEST")
        return {
            "PHP_FPM_TEST": command_setting(self.env, "PHP_FPM_TEST", None) if test else None,
            "PHP_FPM_RELOAD": command_setting(self.env, "PHP_FPM_RELOAD", None),
        }
