"""Service routes, outside the API schema: ``GET /health`` and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from antidistill.gateway.deps import GatewayDep

router = APIRouter(include_in_schema=False)


@router.get("/health")
async def health(gw: GatewayDep) -> dict[str, str]:
    return {"status": "ok", "backend": gw.backend.name if gw.is_set("backend") else "starting"}


@router.get("/metrics")
async def metrics(gw: GatewayDep) -> Response:
    return Response(gw.metrics.render(), media_type=gw.metrics.content_type)
