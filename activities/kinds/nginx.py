"""`nginx_site`: the site's file in NGINX_SITES_AVAILABLE and its link (or file) in
NGINX_SITES_ENABLED, removed before the files and mailboxes so that nothing serves a
half-deleted site; gone once nginx has reloaded after NGINX_TEST passed."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from activities.kinds._common import command_setting
from activities.kinds.base import FILES, MAILBOXES
from activities.kinds.config_files import ReloadedConfigKind


class NginxSite(ReloadedConfigKind):
    kind = "nginx_site"
    settings: ClassVar[tuple[str, ...]] = (
        "NGINX_SITES_AVAILABLE",
        "NGINX_SITES_ENABLED",
        "NGINX_TEST",
        "NGINX_RELOAD",
    )
    before = frozenset({FILES, MAILBOXES})
    server_label = "nginx"

    def folders(self) -> dict[str, Path]:
        return {
            "NGINX_SITES_AVAILABLE": Path(
                self.env.get("NGINX_SITES_AVAILABLE") or "/etc/nginx/sites-available"
            ),
            "NGINX_SITES_ENABLED": Path(
                self.env.get("NGINX_SITES_ENABLED") or "/etc/nginx/sites-enabled"
            ),
        }

    def commands(self) -> dict[str, list[str] | None]:
        return {
            "NGINX_TEST": command_setting(self.env, "NGINX_TEST", "nginx -t"),
            "NGINX_RELOAD": command_setting(self.env, "NGINX_RELOAD", "nginx -s reload"),
        }
