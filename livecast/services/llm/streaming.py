"""Server-sent events and stream plumbing shared by the generating routes."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, Sequence

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from livecast.engine import RequestOutput
from livecast.services.errors import APIError

logger = logging.getLogger("livecast.server")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def sse_response(events: AsyncIterator[dict], done: bool = True) -> StreamingResponse:
    """Stream `events` as SSE, then `data: [DONE]` (OpenAI) unless `done` is False (TGI).

    When the client goes away Starlette cancels the body iterator; closing it closes the engine
    streams beneath, which aborts their requests and frees their KV blocks.
    """
    async def body() -> AsyncIterator[str]:
        async with aclosing(events):
            try:
                async for event in events:
                    yield sse(event)
            except APIError as exc:
                yield sse(exc.body())
            except Exception:  # the headers are gone: report in-band rather than cut the stream
                logger.exception("stream failed")
                yield sse(APIError(500, "internal server error during generation").body())
        if done:
            yield sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


async def until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work` (opening streams, collecting a non-streamed answer) unless the client leaves
    first: then `work` is cancelled, which closes its engine streams and aborts their requests."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return Response(status_code=499)  # nobody is listening any more
    return task.result()


async def open_all(opens: Sequence) -> list[AsyncIterator[RequestOutput]]:
    """Await several `LLMService.open_stream(...)` coroutines; if any fails, close the rest and raise."""
    results = await asyncio.gather(*opens, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()
        raise errors[0]
    return list(results)


async def merge(streams: Sequence[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several output streams as (stream index, output), in arrival order."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for out in only:
                yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * len(streams))
    end = object()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async with aclosing(stream):
                async for out in stream:
                    await queue.put((i, out))
        except Exception as exc:  # hand errors to the consumer; a cancel just ends the pump
            await queue.put((i, exc))
            return
        await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
