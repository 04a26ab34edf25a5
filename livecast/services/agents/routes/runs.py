"""/v1/threads/{id}/runs (create, list, retrieve, modify, cancel, submit_tool_outputs), run steps, and
POST /v1/threads/runs; streamed runs send named `thread.*` events as the official client expects."""
from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from livecast.services.agents.assistants.protocol import (MetadataUpdate, RunCreate, SubmitToolOutputs, ThreadAndRunCreate,
                                                 ThreadCreate)
from livecast.services.agents.deps import get_agents
from livecast.services.retrieval.pagination import list_object
from livecast.services.agents.routes.assistants import create_thread_now
from livecast.services.errors import APIError
from livecast.services.llm.streaming import SSE_HEADERS, sse, until_disconnected

router = APIRouter()


def thread_events(events: AsyncIterator[tuple[str, dict]]) -> StreamingResponse:
    """`event: thread.…` + `data:` per event, then `event: done` / `data: [DONE]`. A client that leaves
    closes `events`, which aborts generation and records the run as cancelled."""
    async def body():
        async with aclosing(events):
            try:
                async for name, data in events:
                    yield f"event: {name}\n{sse(data)}"
            except APIError as exc:
                yield f"event: error\n{sse(exc.body())}"
        yield "event: done\ndata: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _respond(request: Request, work, stream: bool):
    async def respond():
        result = await work
        return thread_events(result) if stream else result

    return await until_disconnected(request, respond())


@router.post("/v1/threads/{thread_id}/runs")
async def create_run(request: Request, thread_id: str, body: RunCreate, agents=Depends(get_agents)):
    return await _respond(request, agents.runs.create(thread_id, body), body.stream)


@router.post("/v1/threads/runs")
async def create_thread_and_run(request: Request, body: ThreadAndRunCreate, agents=Depends(get_agents)):
    agents.store.assistants.require(body.assistant_id, param="assistant_id")
    thread = create_thread_now(agents, body.thread or ThreadCreate())

    async def run():
        result = await agents.runs.create(thread["id"], body)
        return _after_thread_created(thread, result) if body.stream else result

    return await _respond(request, run(), body.stream)


async def _after_thread_created(thread: dict, events: AsyncIterator[tuple[str, dict]]):
    """A created-and-run thread's stream starts with `thread.created`, as OpenAI's does."""
    async with aclosing(events):
        yield "thread.created", thread
        async for event in events:
            yield event


@router.get("/v1/threads/{thread_id}/runs")
async def list_runs(thread_id: str, after: str | None = None, before: str | None = None, limit: int = 20,
                    order: Literal["asc", "desc"] = "desc", agents=Depends(get_agents)):
    agents.store.threads.require(thread_id)
    runs, has_more = agents.store.runs.page(thread_id, after=after, before=before, limit=limit, order=order)
    return list_object([agents.runs.get(thread_id, r["id"]) for r in runs], has_more)


@router.get("/v1/threads/{thread_id}/runs/{run_id}")
async def get_run(thread_id: str, run_id: str, agents=Depends(get_agents)):
    return agents.runs.get(thread_id, run_id)


@router.post("/v1/threads/{thread_id}/runs/{run_id}")
async def update_run(thread_id: str, run_id: str, body: MetadataUpdate, agents=Depends(get_agents)):
    with agents.store.db.transaction():
        run = agents.runs.get(thread_id, run_id)
        run["metadata"] = body.metadata or {}
        agents.store.runs.update(run, thread_id)
    return run


@router.post("/v1/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(thread_id: str, run_id: str, agents=Depends(get_agents)):
    return await agents.runs.cancel(thread_id, run_id)


@router.post("/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs")
async def submit_tool_outputs(request: Request, thread_id: str, run_id: str, body: SubmitToolOutputs,
                              agents=Depends(get_agents)):
    return await _respond(request, agents.runs.submit_tool_outputs(thread_id, run_id, body), body.stream)


@router.get("/v1/threads/{thread_id}/runs/{run_id}/steps")
async def list_run_steps(thread_id: str, run_id: str, after: str | None = None, before: str | None = None,
                         limit: int = 20, order: Literal["asc", "desc"] = "desc", agents=Depends(get_agents)):
    agents.runs.get(thread_id, run_id)
    return list_object(*agents.store.steps.page(run_id, after=after, before=before, limit=limit, order=order))


@router.get("/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
async def get_run_step(thread_id: str, run_id: str, step_id: str, agents=Depends(get_agents)):
    agents.runs.get(thread_id, run_id)
    return agents.store.steps.require(step_id, run_id)
