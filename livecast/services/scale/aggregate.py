"""The ingress's own answers, gathered from every replica: /health, /metrics, the WebRTC session list.

Each asks the live replicas concurrently with a short timeout, so one slow or dead replica shows
up as unhealthy (or missing from /metrics) instead of stalling the answer.
"""
from __future__ import annotations

import asyncio
import json

import httpx

from livecast.services.errors import APIError, overloaded
from livecast.services.scale.replica import HEADER
from livecast.services.scale.routing import Replica

PROBE_TIMEOUT_S = 2.0  # one replica's /health or /metrics
INGRESS_ID = "ingress"  # the x-livecast-replica of answers no single replica gave
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


async def send_error(send, error: APIError, replica_id: str | None = None) -> None:
    """An OpenAI-shaped error response (with the error's own headers, e.g. Retry-After)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    headers.append((HEADER, (replica_id or INGRESS_ID).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send(send, status: int, content_type: bytes, data: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode()),
                            (HEADER, INGRESS_ID.encode())]})
    await send({"type": "http.response.body", "body": data})


async def _gather(client: httpx.AsyncClient, replicas: list[Replica], path: str,
                  headers: dict | None = None) -> dict[str, httpx.Response | None]:
    async def one(replica: Replica):
        try:
            return await client.get(replica.address + path, headers=headers, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return None

    answers = await asyncio.gather(*(one(r) for r in replicas))
    return {r.id: a for r, a in zip(replicas, answers)}


async def health(ingress, scope, send) -> None:
    """`{"status", "mode": "ray", "routing", "replicas": [{id, kind, pid, address, device, load,
    healthy}]}`; "degraded" when some replica fails its /health, 503 when none answers."""
    replicas = sorted(ingress.router.replicas, key=lambda r: (r.kind, r.id))
    answers = await _gather(ingress.client, replicas, "/health")
    listed = [{"id": r.id, "kind": r.kind, "pid": r.pid, "address": r.address, "device": r.device,
               "load": r.load, "healthy": answers[r.id] is not None and answers[r.id].status_code == 200}
              for r in replicas]
    up = any(r["healthy"] for r in listed)
    status = "ok" if up and all(r["healthy"] for r in listed) else "degraded" if up else "error"
    body = {"status": status, "mode": "ray", "routing": ingress.scale.routing, "replicas": listed}
    await _send(send, 200 if up else 503, b"application/json", json.dumps(body).encode())


async def metrics(ingress, scope, send) -> None:
    """Every replica's Prometheus text, merged with a `replica` label (services.scale.metrics)."""
    from livecast.services.scale.metrics import merge

    answers = await _gather(ingress.client, ingress.router.replicas, "/metrics")
    text = merge({rid: a.text for rid, a in answers.items() if a is not None and a.status_code == 200})
    await _send(send, 200, METRICS_TYPE, text.encode())


async def webrtc_sessions(ingress, scope, send) -> None:
    """GET /v1/webrtc/sessions: every media replica's sessions, each tagged with its replica."""
    media = [r for r in ingress.router.replicas if r.kind == "media"]
    if not media:
        return await send_error(send, overloaded("no live media replica; retry later", ingress.retry_after_s))
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in ingress.forward_headers(scope)}
    answers = await _gather(ingress.client, media, "/v1/webrtc/sessions", headers)
    data, max_sessions = [], 0
    for replica in media:
        answer = answers[replica.id]
        if answer is None:
            continue  # gone since the last heartbeat: its sessions went with it
        if answer.status_code != 200:  # e.g. 401: every replica checks the same key
            return await _send(send, answer.status_code, answer.headers.get("content-type", "").encode(), answer.content)
        page = answer.json()
        max_sessions += page.get("max_sessions", 0)
        data += [{**s, "replica": replica.id} for s in page.get("data", [])]
    body = {"object": "list", "max_sessions": max_sessions, "data": data}
    await _send(send, 200, b"application/json", json.dumps(body).encode())


OWN_ROUTES = {("GET", "/health"): health, ("GET", "/metrics"): metrics,
              ("GET", "/v1/webrtc/sessions"): webrtc_sessions}
