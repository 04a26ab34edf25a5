"""The shared runtime runs a real tiny LLM and the demo diffusion pipeline on one thread."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import PIL.Image
import pytest

from livecast.engine import AsyncLLMEngine, EngineConfig, SamplingParams
from livecast.services.runtime.loop import DeviceRuntime
from livecast.services.runtime.policy import Clocks, RuntimePolicy, charge, choose, token_budget
from livecast.streamdiff import StreamBatcher, StreamPipeline


@pytest.fixture(scope="module")
def pipe():
    return StreamPipeline.from_pretrained("demo", resolution=64)


def make_llm(tiny_llama_path, **kwargs):
    return AsyncLLMEngine.from_config(EngineConfig(model=str(tiny_llama_path), dtype="float32",
                                                   kv_cache_memory=64 << 20, **kwargs), log_stats=False)


def image(i: int) -> PIL.Image.Image:
    rng = np.random.default_rng(i)
    return PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64))


class FrameSource:
    """Submits frames at `fps` from a thread, like a camera track; counts what comes back."""

    def __init__(self, batcher: StreamBatcher, runtime: DeviceRuntime, fps: float, stream_id="cam") -> None:
        self.batcher, self.runtime, self.period = batcher, runtime, 1 / fps
        self.stream_id = stream_id
        self.done, self.latencies = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            sent = time.monotonic()
            future = self.batcher.submit(self.stream_id, image(i))
            self.runtime.notify()
            future.add_done_callback(lambda f, t=sent: self._finish(f, t))
            i += 1
            time.sleep(self.period)

    def _finish(self, future, sent) -> None:
        if future.exception() is None:
            self.done += 1
            self.latencies.append(time.monotonic() - sent)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def _generate(llm, rid, max_tokens=48):
    tokens = 0
    async for out in llm.generate([5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=max_tokens,
                                                                ignore_eos=True), rid, delta=True):
        tokens += len(out.outputs[0].token_ids)
    return tokens, out.outputs[0].finish_reason


async def test_chat_and_video_together_both_complete(tiny_llama_path, pipe):
    llm = make_llm(tiny_llama_path)
    batcher = StreamBatcher(pipe, max_batch_size=4)
    batcher.add_stream("cam", prompt="a watercolor city", strength=0.5, seed=1)
    runtime = DeviceRuntime(llm, batcher, RuntimePolicy(frame_deadline_ms=100))
    runtime.start()
    try:
        with FrameSource(batcher, runtime, fps=15) as video:
            results = await asyncio.gather(*(_generate(llm, f"chat-{i}") for i in range(16)))
            await asyncio.sleep(1.0)
        assert all(r == (48, "length") for r in results)
        assert video.done >= 10, video.done
        assert runtime.stats.llm_steps > 0 and runtime.stats.diffusion_batches >= video.done // 4
        # video kept flowing while the LLM batch ran: no frame waited for the whole batch
        assert max(video.latencies) < 2.0
        assert llm.engine.block_manager.device.num_used == 0
    finally:
        await runtime.stop()


def test_policy_is_a_pure_function_of_plain_inputs():
    policy = RuntimePolicy(frame_deadline_ms=50, video_share=0.25, video_llm_token_budget=32)
    idle = dict(llm_wants=False, frames_waiting=False, oldest_frame_age_s=0.0, llm_step_s=0.0)
    assert choose(policy, Clocks(), **idle) == (None, Clocks())
    # one side alone runs, and the idle side's clock comes level so it banks no credit
    assert choose(policy, Clocks(diffusion=1.0, llm=3.0), **{**idle, "frames_waiting": True}) == \
        ("diffusion", Clocks(diffusion=1.0, llm=3.0))
    assert choose(policy, Clocks(diffusion=5.0, llm=1.0), **{**idle, "llm_wants": True}) == \
        ("llm", Clocks(diffusion=5.0, llm=1.0))
    assert choose(policy, Clocks(diffusion=1.0, llm=5.0), **{**idle, "llm_wants": True})[1] == Clocks(5.0, 5.0)
    both = dict(llm_wants=True, frames_waiting=True, llm_step_s=0.01)
    # a fresh frame can wait one short LLM step; a due one goes by the clocks
    assert choose(policy, Clocks(0.0, 1.0), oldest_frame_age_s=0.0, **both)[0] == "llm"
    assert choose(policy, Clocks(0.0, 1.0), oldest_frame_age_s=0.045, **both)[0] == "diffusion"
    assert choose(policy, Clocks(1.0, 0.0), oldest_frame_age_s=0.045, **both)[0] == "llm"
    # busy time advances a clock by time / weight
    assert charge(policy, Clocks(), "diffusion", 0.25) == Clocks(diffusion=1.0, llm=0.0)
    assert charge(policy, Clocks(), "llm", 0.75) == Clocks(diffusion=0.0, llm=1.0)
    # while video is live prefill chunks shrink, but every running sequence still decodes
    assert token_budget(policy, 1024, video_live=False, num_running_seqs=3) == 1024
    assert token_budget(policy, 1024, video_live=True, num_running_seqs=3) == 32
    assert token_budget(policy, 1024, video_live=True, num_running_seqs=40) == 40
    with pytest.raises(ValueError, match="video_share"):
        RuntimePolicy(video_share=1.0)


def test_both_busy_the_device_is_shared_by_weight(tiny_llama_path, pipe):
    llm = make_llm(tiny_llama_path)
    batcher = StreamBatcher(pipe, max_batch_size=4)
    runtime = DeviceRuntime(llm, batcher, RuntimePolicy(frame_deadline_ms=1e-3, video_share=0.25,
                                                        video_llm_token_budget=32))
    assert not runtime.step()  # nothing wants the device
    batcher.add_stream("cam", prompt="x")
    batcher.submit("cam", image(0))
    assert runtime.step() and runtime.stats.diffusion_frames == 1
    llm._commands.append(("add", llm.engine.make_request("r", [1, 2, 3], SamplingParams(max_tokens=400,
                                                                                        ignore_eos=True))))
    # frames always due: the LLM gets ~3/4 of the device time
    for i in range(200):
        batcher.submit("cam", image(i))
        runtime.step()
    video, llm_busy = runtime.stats.diffusion_busy_s, runtime.stats.llm_busy_s
    assert 0.18 < video / (video + llm_busy) < 0.32, runtime.snapshot()
    # the budget is set through the engine's step while video is live, and restored after
    assert llm.engine.scheduler.max_num_batched_tokens == 32
    llm.abort_all()
    while runtime.step():
        pass
    assert not llm.has_work() and llm.engine.block_manager.device.num_used == 0
    batcher.remove_stream("cam")
    llm._commands.append(("add", llm.engine.make_request("s", [1, 2, 3], SamplingParams(max_tokens=1))))
    runtime.step()
    assert llm.engine.scheduler.max_num_batched_tokens == llm.engine.config.max_num_batched_tokens


async def test_stop_under_load_does_not_hang(tiny_llama_path, pipe):
    llm = make_llm(tiny_llama_path)
    runtime = DeviceRuntime(llm, None)
    runtime.start()
    tasks = [asyncio.create_task(_generate(llm, f"long-{i}", max_tokens=400)) for i in range(8)]
    await asyncio.sleep(0.5)
    start = time.monotonic()
    await runtime.stop()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert time.monotonic() - start < 10
    assert all(reason == "abort" for _, reason in results)
    assert llm.engine.block_manager.device.num_used == 0
