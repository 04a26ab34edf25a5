"""The lifespan piece that puts both engines on one device: the DeviceRuntime and the memory plan."""
from __future__ import annotations

import asyncio
import dataclasses
import glob
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.runtime import DeviceRuntime, RuntimePolicy, plan_kv_cache_bytes


class _RuntimeCollector(Collector):
    def __init__(self, runtime: DeviceRuntime) -> None:
        self.runtime = runtime

    def collect(self):
        snap = self.runtime.snapshot()
        for name, key, help_text in (
                ("livecast_runtime_diffusion_batches", "diffusion_batches", "Diffusion batches run on the device."),
                ("livecast_runtime_llm_steps", "llm_steps", "LLM engine steps run on the device."),
                ("livecast_runtime_deadline_misses", "deadline_misses",
                 "Diffusion batches whose oldest frame waited past the frame deadline."),
                ("livecast_runtime_diffusion_busy_seconds", "diffusion_busy_s", "Device time spent on diffusion."),
                ("livecast_runtime_llm_busy_seconds", "llm_busy_s", "Device time spent on LLM steps.")):
            yield CounterMetricFamily(name, help_text, value=snap[key])
        yield GaugeMetricFamily("livecast_runtime_frame_wait_p95_ms",
                                "p95 over recent batches of how long the oldest frame waited for the device.",
                                value=snap["frame_wait_p95_ms"])

    def describe(self):
        return []


@asynccontextmanager
async def device_runtime(llm_server, diffusion, policy: RuntimePolicy,
                         registry: CollectorRegistry) -> AsyncIterator[DeviceRuntime]:
    """One thread steps both engines. On exit: hang up video, stop the loop (LLM requests end with
    'abort'), then fail frames still waiting so no client awaits a batch that will never run."""
    batcher = diffusion.batcher if diffusion is not None else None
    runtime = DeviceRuntime(llm_server.engine if llm_server is not None else None, batcher, policy)
    if diffusion is not None:
        diffusion.on_submit = runtime.notify
    collector = _RuntimeCollector(runtime)
    registry.register(collector)
    runtime.start()
    try:
        yield runtime
    finally:
        if diffusion is not None and diffusion.video is not None:
            await diffusion.video.close_all()
        await runtime.stop()
        if batcher is not None:
            batcher.stop()
        registry.unregister(collector)


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


def plan_memory(settings, diffusion):
    """On a CPU host with `memory_budget` and no explicit KV size: size the KV cache from what the
    diffusion models and LLM weights leave. (On CUDA the engine reads free device memory after the
    diffusion side is built, which accounts for it already.)"""
    if settings.memory_budget is None or settings.kv_cache_memory is not None:
        return settings
    config = settings.engine_config()
    if config.torch_device().type != "cpu":
        return settings
    diffusion_bytes = 0
    if diffusion is not None and settings.diffusion_memory is not None:
        diffusion_bytes = settings.diffusion_memory
    elif diffusion is not None:
        pipe = diffusion.pipe
        weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                      for p in m.parameters())
        diffusion_bytes = int(weights * 1.5)  # activations of a max-size batch: about half the weights again
    kv = plan_kv_cache_bytes("cpu", settings.memory_budget, diffusion_bytes, _llm_weight_bytes(config))
    return dataclasses.replace(settings, kv_cache_memory=kv)


def _llm_weight_bytes(config) -> int:
    from safetensors import safe_open

    from engine.model_loader import resolve_model

    element = torch.tensor([], dtype=config.torch_dtype()).element_size()
    total = 0
    for file in glob.glob(str(resolve_model(config.model) / "*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                total += _numel(f.get_slice(name).get_shape())
    return total * element


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
