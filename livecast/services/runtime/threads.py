"""Threads for model work that must not touch the device thread's OpenMP pool."""
from __future__ import annotations

import asyncio
import threading


async def on_own_thread(fn, *args):
    """`fn(*args)` on a thread that exits when it returns; for work that runs torch ops off the
    device thread (loading models). Each host thread that runs a parallel torch op keeps an
    OpenMP worker pool for as long as it lives, and once libgomp manages more threads than there
    are CPUs it stops spinning between parallel regions: every small op on the device thread
    then pays a wake-up (a 256 px diffusion step went 34 -> 71 ms on 2 cores). An executor
    thread never exits; this one does, and its pool goes with it."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(result, error) -> None:
        if done.done():  # the awaiting coroutine was cancelled
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"load-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return await done
