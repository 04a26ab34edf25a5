"""The lifespan piece that puts every engine on one device: the DeviceRuntime and its metrics."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from livecast.services.runtime.loop import DeviceRuntime
from livecast.services.runtime.policy import RuntimePolicy


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
async def device_runtime(llm, batcher, policy: RuntimePolicy, registry: CollectorRegistry,
                         others=()) -> AsyncIterator[DeviceRuntime]:
    """One thread steps every engine. Entered after the engines' own lifespans, so it exits first:
    stop the loop (LLM requests end with 'abort') before the engines close. The media lifespan
    hangs up video and fails frames still waiting after that."""
    runtime = DeviceRuntime(llm, batcher, policy, others)
    collector = _RuntimeCollector(runtime)
    registry.register(collector)
    runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
        registry.unregister(collector)
