"""Requests every replica of a pool must see: sent to all of them at once, one answer back.

LoRA adapters are server-wide state that each LLM replica holds in its own process, so
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (routing.BROADCAST_PATHS) go to every live
LLM replica, not to one. The answer:
- every replica answered 2xx: the first one's answer (vLLM's plain-text success);
- every replica refused with the same status (a malformed adapter's 400, an unknown name's 404,
  a 401/403): the first one's answer, as if there were one server;
- otherwise a 502 naming each replica that failed and how. A load that some replicas accepted is
  unloaded from them again, so no replica serves an adapter the others lack and a retry starts clean.
"""
from __future__ import annotations

import asyncio
import json

import httpx

from livecast.services.errors import APIError, overloaded
from livecast.services.scale.aggregate import send_error
from livecast.services.scale.replica import HEADER
from livecast.services.scale.routing import Replica

LOAD_PATH, UNLOAD_PATH = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
MAX_DETAIL_CHARS = 300  # of each failed replica's error message, in the 502


def _ok(answer) -> bool:
    return isinstance(answer, httpx.Response) and 200 <= answer.status_code < 300


def _failure(answer) -> str:
    if not isinstance(answer, httpx.Response):
        return f"unreachable ({type(answer).__name__})"
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.text
    return f"{answer.status_code}: {str(message)[:MAX_DETAIL_CHARS]}"


async def _relay(send, replica_id: str, answer: httpx.Response) -> None:
    headers = [(b"content-type", answer.headers.get("content-type", "text/plain").encode()),
               (b"content-length", str(len(answer.content)).encode()), (HEADER, replica_id.encode())]
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": answer.content})


async def broadcast(ingress, replicas: list[Replica], method: str, path: str, target: str, headers,
                    body: bytes, send) -> None:
    """Send the request to every replica in `replicas` concurrently and answer once (module doc)."""
    if not replicas:
        return await send_error(send, overloaded("no live llm replica; retry later", ingress.retry_after_s))

    async def one(replica: Replica, content: bytes, route: str):
        try:
            return await ingress.client.request(method, replica.address + route, headers=headers, content=content)
        except httpx.HTTPError as exc:
            return exc

    answers = await asyncio.gather(*(one(r, body, target) for r in replicas))
    if all(_ok(a) for a in answers):
        return await _relay(send, replicas[0].id, answers[0])
    statuses = {a.status_code if isinstance(a, httpx.Response) else None for a in answers}
    if len(statuses) == 1 and None not in statuses:  # refused alike by all: one server's answer
        return await _relay(send, replicas[0].id, answers[0])
    failed = [(r, a) for r, a in zip(replicas, answers) if not _ok(a)]
    accepted = [r for r, a in zip(replicas, answers) if _ok(a)]
    note = ""
    if path == LOAD_PATH and accepted:
        undo = json.dumps({"lora_name": json.loads(body).get("lora_name")}).encode()
        undone = await asyncio.gather(*(one(r, undo, UNLOAD_PATH) for r in accepted))
        kept = [r.id for r, a in zip(accepted, undone) if not _ok(a)]
        note = f"; unloaded again from {', '.join(r.id for r in accepted)}" + (
            f" (still loaded on {', '.join(kept)})" if kept else "")
    detail = "; ".join(f"replica {r.id}: {_failure(a)}" for r, a in failed)
    await send_error(send, APIError(502, f"{path} failed on {len(failed)} of {len(replicas)} llm replicas: "
                                         f"{detail}{note}", type="server_error", code="replica_failed"))
