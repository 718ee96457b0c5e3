"""`dns_zone`: the zone (`example.com.`) deleted through the PowerDNS HTTP API after the
web site stops; gone when the API answers 404 for it and, where the worker knows the
server's DNS address (PDNS_DNS_ADDRESS, `HOST:PORT`), an SOA query is no longer answered."""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar
from urllib.parse import quote

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from activities.kinds.base import (
    Measure,
    NotConfigured,
    Removal,
    ResourceKind,
    ResourceRefused,
    ServerUnavailable,
)
from activities.kinds.nginx import NginxSite
from bajas.models import ResourceContext, ResourceRef

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
TIMEOUT = 10.0
DNS_TIMEOUT = 3.0


def dns_address(value: str) -> tuple[str, int]:
    """`127.0.0.1:5300` or `[::1]:53` as (address, port); ValueError otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        raise ValueError("not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    return str(ipaddress.ip_address(host)), int(port)


def covers(zone: str, domain: str) -> bool:
    """Whether the zone answers for the domain (the zone itself or a name below it)."""
    name = domain.lower().rstrip(".")
    apex = zone.rstrip(".")
    return name == apex or name.endswith("." + apex)


class DnsZone(ResourceKind):
    kind = "dns_zone"
    settings: ClassVar[tuple[str, ...]] = (
        "PDNS_API_URL",
        "PDNS_API_KEY",
        "PDNS_SERVER_ID",
        "PDNS_DNS_ADDRESS",
    )
    # The site stops first, so that no visitor is sent to a site being taken down.
    after = frozenset({NginxSite.kind})

    def configuration_error(self) -> str | None:
        for setting in ("PDNS_API_URL", "PDNS_API_KEY"):
            if not self.env.get(setting, "").strip():
                return f"{setting} is not set"
        if self.env.get("PDNS_DNS_ADDRESS"):
            try:
                dns_address(self.env["PDNS_DNS_ADDRESS"])
            except ValueError:
                return "PDNS_DNS_ADDRESS is not an IP address and port (127.0.0.1:53)"
        return None

    def name_error(self, name: str) -> str | None:
        if not name.endswith(".") or name != name.lower():
            return "not a zone name in lower case ending in a dot (example.com.)"
        labels = name[:-1].split(".")
        if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            return "not a zone below a top-level domain (example.com.)"
        return None

    async def inventory(self, resource: ResourceRef, context: ResourceContext) -> Measure:
        zone = await self._zone(resource.name, rrsets=True)
        if zone is None:
            return Measure()
        return Measure(items=sum(len(rrset.get("records", [])) for rrset in zone["rrsets"]))

    async def preflight(self, resource: ResourceRef, context: ResourceContext) -> None:
        shared = sorted(d for d in context.other_domains if covers(resource.name, d))
        if shared:
            raise ResourceRefused(
                f"the zone answers for {', '.join(shared)}, a domain of another live service"
            )

    async def delete(self, resource: ResourceRef, context: ResourceContext) -> Removal:
        measure = await self.inventory(resource, context)
        if measure.items is None:
            return Removal()
        await self._call("DELETE", resource.name, (204, 404))
        return Removal(items=measure.items)

    async def verify(self, resource: ResourceRef, context: ResourceContext) -> str | None:
        if await self._zone(resource.name, rrsets=False) is not None:
            return "the PowerDNS API still lists the zone"
        if self.env.get("PDNS_DNS_ADDRESS"):
            return await self._soa_left(resource.name)
        return None

    async def _zone(self, zone: str, *, rrsets: bool) -> dict | None:
        response = await self._call(
            "GET", zone, (200, 404), params={"rrsets": "true" if rrsets else "false"}
        )
        return response.json() if response.status_code == 200 else None

    async def _call(
        self, method: str, zone: str, expected: tuple[int, ...], params: dict | None = None
    ) -> httpx.Response:
        base = self.env["PDNS_API_URL"].rstrip("/")
        server = quote(self.env.get("PDNS_SERVER_ID") or "localhost", safe="")
        url = f"{base}/api/v1/servers/{server}/zones/{quote(zone, safe='')}"
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.request(
                    method, url, params=params, headers={"X-API-Key": self.env["PDNS_API_KEY"]}
                )
        except httpx.HTTPError as err:
            raise ServerUnavailable(f"PowerDNS API at {base} is not answering: {err}") from err
        if response.status_code in (401, 403):
            raise NotConfigured(f"the PowerDNS API at {base} refuses PDNS_API_KEY")
        if response.status_code not in expected:
            raise ServerUnavailable(
                f"PowerDNS API at {base}: {method} {zone} answered {response.status_code}"
                f" {response.text[:200].strip()}"
            )
        return response

    async def _soa_left(self, zone: str) -> str | None:
        host, port = dns_address(self.env["PDNS_DNS_ADDRESS"])
        query = dns.message.make_query(zone, dns.rdatatype.SOA)
        try:
            answer = await dns.asyncquery.udp(query, host, port=port, timeout=DNS_TIMEOUT)
        except (dns.exception.DNSException, OSError) as err:
            raise ServerUnavailable(
                f"PowerDNS at {host}:{port} is not answering DNS: {err}"
            ) from err
        if answer.rcode() in (dns.rcode.REFUSED, dns.rcode.NXDOMAIN) or not answer.answer:
            return None
        return f"PowerDNS at {host}:{port} still answers the zone's SOA"
