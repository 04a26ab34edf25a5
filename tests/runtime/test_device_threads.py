"""Model loading runs on a thread that exits (see services.runtime.threads.on_own_thread)."""
from __future__ import annotations

import threading

import pytest
import torch

from livecast.services.runtime.threads import on_own_thread


async def test_on_own_thread_returns_raises_and_leaves_no_thread():
    def load(n):
        assert threading.current_thread() is not threading.main_thread()
        return torch.ones(256, 256).matmul(torch.ones(256, n)).shape, threading.current_thread()

    shape, worker = await on_own_thread(load, 8)
    assert shape == (256, 8)
    worker.join(timeout=5)
    assert not worker.is_alive() and worker.name == "load-load"

    def broken():
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        await on_own_thread(broken)
    for thread in [t for t in threading.enumerate() if t.name == "load-broken"]:
        thread.join(timeout=5)
        assert not thread.is_alive()
