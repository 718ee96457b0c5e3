"""What the app trusts of the network in front of it: proxies, https, host names.

- `X-Forwarded-For` / `X-Forwarded-Proto` count only from `TRUSTED_PROXIES`.
- An https request (or every request, with `HTTPS_ONLY`) gets HSTS and `Secure` cookies.
- With `PUBLIC_HOSTS`, any other `Host` is refused (400); either way no link or redirect
  is built from `Host`: they are all paths.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import FastAPI, Request
from jinja2 import pass_context
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from bajas.config import Settings

HSTS = "max-age=31536000"


class HttpsHeaders:
    """On https: `Strict-Transport-Security`, and `Secure` on every cookie set."""

    def __init__(self, app: ASGIApp, *, https_only: bool) -> None:
        self.app = app
        self.https_only = https_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.https_only or scope.get("scheme") == "https"):
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value + b"; Secure")
                    if name.lower() == b"set-cookie" and b"secure" not in value.lower()
                    else (name, value)
                    for name, value in message.get("headers", [])
                ]
                headers.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secure)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middlewares, outermost last: proxies are unwrapped before anything looks."""
    app.add_middleware(HttpsHeaders, https_only=settings.https_only)
    if settings.public_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.public_hosts)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)


def client_address(request: Request) -> str | None:
    """The client's address; behind a trusted proxy, the one the proxy saw."""
    return request.client.host if request.client else None


def from_loopback(request: Request) -> bool:
    address = client_address(request)
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def path_for(request: Request, name: str, /, **params: Any) -> str:
    """The path of a route, never an absolute URL: nothing taken from `Host`."""
    return request.scope.get("root_path", "") + str(request.app.url_path_for(name, **params))


@pass_context
def template_path_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
    """`url_for` in the templates: the same, as a path."""
    return path_for(context["request"], name, **params)
