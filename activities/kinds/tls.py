"""`tls_certificate`: a certbot lineage (`live/NAME`, `archive/NAME`, `renewal/NAME.conf`
under LETSENCRYPT_DIR), removed once the site that uses it is gone, so it is no longer
renewed and its private key leaves the disk. A certificate whose names cover a domain of
another live service is refused: that service would lose its certificate with it."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from activities.kinds._common import file_name_error, folder_error
from activities.kinds.base import Measure, Removal, ResourceKind, ResourceRefused
from activities.kinds.nginx import NginxSite
from bajas.models import ResourceContext, ResourceRef


def certificate_names(pem: bytes) -> set[str]:
    """The DNS names a certificate is valid for: its SANs, or its CN when it has none."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return {name.lower().rstrip(".") for name in names}


def name_covers(pattern: str, domain: str) -> bool:
    """Whether a certificate name serves the domain (`*.x` covers one label below x)."""
    domain = domain.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == domain


class TlsCertificate(ResourceKind):
    kind = "tls_certificate"
    settings: ClassVar[tuple[str, ...]] = ("LETSENCRYPT_DIR",)
    # nginx refuses a configuration whose certificate files are missing: the site first.
    after = frozenset({NginxSite.kind})

    def configuration_error(self) -> str | None:
        return folder_error("LETSENCRYPT_DIR", self._root())

    def name_error(self, name: str) -> str | None:
        if name == "README":  # certbot's own file in live/
            return "README is certbot's, not a certificate"
        return file_name_error(name)

    def _root(self) -> Path:
        return Path(self.env.get("LETSENCRYPT_DIR") or "/etc/letsencrypt")

    def _places(self, name: str) -> list[Path]:
        root = self._root()
        return [root / "live" / name, root / "archive" / name, root / "renewal" / f"{name}.conf"]

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        return await asyncio.to_thread(self._measure, resource.name)

    def _measure(self, name: str) -> Measure:
        files = size = 0
        for place in self._places(name):
            found = [place] if place.is_file() or place.is_symlink() else place.rglob("*")
            for path in found:
                if path.is_file() and not path.is_symlink():
                    files, size = files + 1, size + path.stat().st_size
        present = any(os.path.lexists(p) for p in self._places(name))
        return Measure(bytes=size, items=files) if present else Measure()

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        names = await asyncio.to_thread(self._names, resource.name)
        shared = sorted({d for d in context.other_domains for n in names if name_covers(n, d)})
        if shared:
            raise ResourceRefused(
                f"it also covers {', '.join(shared)}, a domain of another live service"
            )

    def _names(self, name: str) -> set[str]:
        """Names of every certificate the lineage holds (each renewal in archive/)."""
        root = self._root()
        pems = [root / "live" / name / "cert.pem", *(root / "archive" / name).glob("cert*.pem")]
        names: set[str] = set()
        for pem in pems:
            if pem.is_file():
                try:
                    names |= certificate_names(pem.read_bytes())
                except ValueError as err:
                    raise ResourceRefused(
                        f"{pem} is not a certificate bajas can read: {err}"
                    ) from err
        return names

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        measure = await self.inventory(resource, context)
        await asyncio.to_thread(self._remove, resource.name)
        return Removal(bytes=measure.bytes, items=measure.items)

    def _remove(self, name: str) -> None:
        for place in self._places(name):
            if place.is_dir() and not place.is_symlink():
                shutil.rmtree(place)
            elif os.path.lexists(place):
                place.unlink()

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        left = [str(p) for p in self._places(resource.name) if os.path.lexists(p)]
        return f"still present: {', '.join(left)}" if left else None
