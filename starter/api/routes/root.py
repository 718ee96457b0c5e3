"""The site's root and a health check for whoever starts the API."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from starter.api.edge import path_for

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    """People arriving at the root want the panel."""
    return RedirectResponse(path_for(request, "services"), status_code=303)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answers once the app is serving (no check of Temporal or the database)."""
    return {"status": "ok"}
