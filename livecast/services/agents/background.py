"""Background work (background responses, assistant runs): a bounded set of tasks by object id.

Cancelling a task closes its run loop, which aborts the engine request; the task's own `finally`
records the object as cancelled. Closing cancels everything still running (server shutdown).
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from livecast.services.errors import overloaded

logger = logging.getLogger("livecast.agents")


class Background:
    def __init__(self, max_tasks: int, retry_after_s: int = 1) -> None:
        self.max_tasks, self.retry_after_s = max_tasks, retry_after_s
        self.tasks: dict[str, asyncio.Task] = {}

    def check_room(self) -> None:
        """503 (retry later) when `max_tasks` are already running; call before writing anything."""
        if len(self.tasks) >= self.max_tasks:
            raise overloaded(f"{self.max_tasks} background responses and runs are already running; retry later",
                             self.retry_after_s)

    def start(self, key: str, events: AsyncIterator, cleanup: Callable[[], Awaitable] | None = None) -> None:
        """Run `events` to its end in a task (its events go nowhere; it records its own results)."""
        task = asyncio.create_task(drain(events, cleanup), name=f"agents:{key}")
        self.tasks[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: str, task: asyncio.Task) -> None:
        if self.tasks.get(key) is task:
            del self.tasks[key]
        if not task.cancelled() and task.exception() is not None:
            logger.error("background %s failed", key, exc_info=task.exception())

    def running(self, key: str) -> bool:
        return key in self.tasks

    async def cancel(self, key: str) -> bool:
        task = self.tasks.get(key)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def drain(events: AsyncIterator, cleanup: Callable[[], Awaitable] | None = None) -> None:
    """Consume `events`; then `cleanup()`, which must also run when cancelled before the first event."""
    try:
        async for _ in events:
            pass
    finally:
        if cleanup is not None:
            await cleanup()
