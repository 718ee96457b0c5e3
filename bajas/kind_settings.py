"""The settings each resource kind of contract section 9 reads, and whether they are usable.

`bajas check` judges a worker's environment by this table: it may not load the kinds
themselves (they live in activities/, which the starter never imports). A kind a
provider's package adds is not in it, and is reported as not checked.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit


class Form(Enum):
    """What a setting's value must be for the kind to work with it."""

    DIRECTORY = "an existing directory"
    FILE = "a readable file"
    COMMAND = "a command found on PATH"
    VALUE = "any value"
    MYSQL_URL = "a mysql:// URL"
    POSTGRESQL_URL = "a postgresql:// URL"
    HTTP_URL = "an http(s):// URL"


@dataclass(frozen=True)
class KindSetting:
    name: str
    form: Form
    # None: unset means the kind's resources are refused (contract section 9)
    default: str | None = None


_MARIADB = (KindSetting("MARIADB_URL", Form.MYSQL_URL),)
_POSTGRESQL = (KindSetting("POSTGRESQL_URL", Form.POSTGRESQL_URL),)

KIND_SETTINGS: dict[str, tuple[KindSetting, ...]] = {
    "mariadb_database": _MARIADB,
    "mariadb_user": _MARIADB,
    "postgresql_database": _POSTGRESQL,
    "postgresql_role": _POSTGRESQL,
    "restic_snapshots": (
        KindSetting("RESTIC_REPOSITORY", Form.VALUE),
        KindSetting("RESTIC_PASSWORD_FILE", Form.FILE),
        KindSetting("RESTIC_PRUNE_WITHIN", Form.VALUE, "0"),
    ),
    "backup_directory": (KindSetting("BACKUP_ROOT", Form.DIRECTORY, "./.bajas/backups"),),
    "cron": (),
    "nginx_site": (
        KindSetting("NGINX_SITES_AVAILABLE", Form.DIRECTORY, "/etc/nginx/sites-available"),
        KindSetting("NGINX_SITES_ENABLED", Form.DIRECTORY, "/etc/nginx/sites-enabled"),
        KindSetting("NGINX_TEST", Form.COMMAND, "nginx -t"),
        KindSetting("NGINX_RELOAD", Form.COMMAND, "nginx -s reload"),
    ),
    "php_fpm_pool": (
        KindSetting("PHP_FPM_POOL_DIR", Form.DIRECTORY),
        KindSetting("PHP_FPM_RELOAD", Form.COMMAND),
    ),
    "tls_certificate": (KindSetting("LETSENCRYPT_DIR", Form.DIRECTORY, "/etc/letsencrypt"),),
    "dns_zone": (
        KindSetting("PDNS_API_URL", Form.HTTP_URL),
        KindSetting("PDNS_API_KEY", Form.VALUE),
        KindSetting("PDNS_SERVER_ID", Form.VALUE, "localhost"),
    ),
    "system_user": (),
}

_SCHEMES = {
    Form.MYSQL_URL: ("mysql", "mariadb"),
    Form.POSTGRESQL_URL: ("postgresql", "postgres"),
    Form.HTTP_URL: ("http", "https"),
}


def setting_problem(setting: KindSetting, env: Mapping[str, str]) -> str | None:
    """Why `setting` is not usable in `env` (naming it), or None."""
    value = env.get(setting.name, "").strip() or setting.default
    if value is None:
        return f"{setting.name} is not set"
    form = setting.form
    if form is Form.DIRECTORY and not Path(value).is_dir():
        return f"{setting.name}={value} is not a directory"
    if form is Form.FILE and not os.access(value, os.R_OK):
        return f"{setting.name}={value} is not a readable file"
    if form is Form.COMMAND:
        try:
            program = shlex.split(value)[0]
        except (ValueError, IndexError):
            return f"{setting.name} is not a command: {value!r}"
        if shutil.which(program) is None:
            return f"{setting.name}: {program} is not found on PATH"
    if form in _SCHEMES and urlsplit(value).scheme not in _SCHEMES[form]:
        return f"{setting.name} must be {form.value}"
    return None


def kind_problems(kind: str, env: Mapping[str, str]) -> list[str] | None:
    """What keeps `kind`'s settings from being usable ([] when none); None for a kind
    this table does not know (a provider's own)."""
    settings = KIND_SETTINGS.get(kind)
    if settings is None:
        return None
    return [problem for s in settings if (problem := setting_problem(s, env)) is not None]
