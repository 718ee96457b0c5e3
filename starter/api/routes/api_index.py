"""`GET /api`: a map of the HTTP API for whoever opens it first (no token needed: it says
only what the public OpenAPI schema says)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request

from starter.api.schemas import ApiIndex, ApiRoute

router = APIRouter(tags=["index"])

API_PREFIX = "/api/"


def _routes(app: FastAPI) -> list[ApiRoute]:
    routes = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in item.items():
            text = operation.get("description") or operation.get("summary") or ""
            routes.append(
                ApiRoute(method=method.upper(), path=path, does=text.strip().split("\n", 1)[0])
            )
    return routes


@router.get("/api", response_model=ApiIndex)
async def api_index(request: Request) -> ApiIndex:
    """Links to the docs and the schema, and every route of the API with what it does."""
    app: FastAPI = request.app
    return ApiIndex(
        title=app.title,
        version=app.version,
        docs=app.docs_url or "",
        openapi=app.openapi_url or "",
        authentication="every route below needs Authorization: Bearer $PANEL_API_TOKEN",
        routes=_routes(app),
    )
