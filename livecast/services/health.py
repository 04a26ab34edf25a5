"""GET /health and GET /metrics (Prometheus text from the app's own registry). No auth on either."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """`{"status", "llm": {…} | null, "diffusion": {…} | null, "runtime": {…} | null, "sandbox": {…} |
    null}`: a side is null when disabled; 503 when an enabled side is not healthy. `runtime` is the
    device loop that steps both: its policy and counters; `sandbox` the code interpreter's layers and
    the limits in force (per process, per container, OOM scores, and each container's cgroup or null and why)."""
    state = request.app.state
    sides = {"llm": getattr(state, "llm", None), "diffusion": getattr(state, "media", None)}
    body = {name: side.health() if side is not None else None for name, side in sides.items()}
    healthy = all(part is None or part.get("healthy", True) for part in body.values())
    runtime = getattr(state, "runtime", None)
    body["runtime"] = runtime.health() if runtime is not None else None
    containers = getattr(state, "containers", None)  # the code interpreter: its layers and the limits in force
    body["sandbox"] = containers.health() if containers is not None else None
    return JSONResponse({"status": "ok" if healthy else "error", **body}, status_code=200 if healthy else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request):
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
