"""`bajas codec-server`: Temporal's codec server protocol over bajas' payload codec.

The Temporal server keeps only ciphertext (bajas.codec); operators read it decoded through
this server: the Web UI's codec setting calls it from the browser, and
`temporal workflow show --codec-endpoint URL --codec-auth "Bearer TOKEN"` from a terminal.
`POST /encode` and `POST /decode` (also under `/{namespace}/`) take and give
`{"payloads": [...]}` in proto3 JSON. Every call needs `Authorization: Bearer
$CODEC_SERVER_TOKEN`, or the cookie that signing in at `/` sets, which the Web UI sends when
its "Include cross-origin credentials" setting is on.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from bajas.codec import PayloadKeyError
from bajas.config import ConfigError, Settings
from bajas.temporal_client import payload_codec

SESSION_COOKIE = "bajas_codec"
SESSION_MAX_AGE = 12 * 3600
CORS_HEADERS = ["Content-Type", "X-Namespace", "Authorization"]
Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]

_SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bajas codec server</title></head>
<body><h1>bajas codec server</h1><p>{message}</p>
<form method="post" action="login">
<label>CODEC_SERVER_TOKEN <input type="password" name="token" autocomplete="off"></label>
<button type="submit">Sign in</button></form>
<p>Then, in the Temporal Web UI's codec server setting, enter this server's address and
turn on "Include cross-origin credentials".</p></body></html>
"""


def create_codec_app(settings: Settings) -> FastAPI:
    """The codec server; ConfigError without CODEC_SERVER_TOKEN or PAYLOAD_KEYS."""
    token = settings.require_codec_server_token()
    codec = payload_codec(settings)
    if codec is None:
        raise ConfigError("PAYLOAD_KEYS is not set: the codec server has no key to decode with")
    session = _session_value(token)

    def authorized(request: Request) -> None:
        bearer = request.headers.get("authorization", "")
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if not (_same(bearer, f"Bearer {token}") or _same(cookie, session)):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "Authorization: Bearer $CODEC_SERVER_TOKEN is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(title="bajas codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.codec_origins(),
        allow_methods=["POST"],
        allow_headers=CORS_HEADERS,
        allow_credentials=True,
        max_age=600,
    )
    codec_routes = APIRouter(dependencies=[Depends(authorized)])

    @codec_routes.post("/encode")
    @codec_routes.post("/{namespace}/encode")
    async def encode(request: Request) -> Response:
        """Encrypt payloads with the first key of PAYLOAD_KEYS."""
        return await _transcode(request, codec.encode)

    @codec_routes.post("/decode")
    @codec_routes.post("/{namespace}/decode")
    async def decode(request: Request) -> Response:
        """Decrypt payloads with whichever listed key made them; clear ones pass through."""
        return await _transcode(request, codec.decode)

    @app.get("/", response_class=HTMLResponse)
    async def sign_in_page() -> str:
        """Where an operator signs the browser in for the Web UI."""
        return _SIGN_IN_PAGE.format(message="Sign this browser in to read encrypted payloads.")

    @app.post("/login", response_class=HTMLResponse)
    async def sign_in(request: Request, given: Annotated[str, Form(alias="token")]) -> Response:
        """Set the session cookie the Web UI sends along with its cross-origin calls."""
        if not _same(given.strip(), token):
            page = _SIGN_IN_PAGE.format(message="Wrong token.")
            return HTMLResponse(page, status.HTTP_401_UNAUTHORIZED)
        answer = HTMLResponse(_SIGN_IN_PAGE.format(message="Signed in."))
        answer.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=SESSION_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return answer

    app.include_router(codec_routes)
    return app


async def _transcode(request: Request, transform: Transform) -> Response:
    try:
        payloads = json_format.Parse(await request.body(), Payloads())
    except json_format.ParseError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"not a Payloads message: {err}") from None
    try:
        done = Payloads(payloads=await transform(payloads.payloads))
    except PayloadKeyError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None
    body = json_format.MessageToJson(done, indent=None, always_print_fields_with_no_presence=True)
    return Response(body, media_type="application/json")


def _session_value(token: str) -> str:
    """The cookie holds a value derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"bajas codec session", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
