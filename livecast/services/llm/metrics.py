"""Prometheus metrics on a per-app CollectorRegistry (never the process-global one).

Engine state (queue depths, KV/swap usage, token counters) is read from `engine.stats()` at
scrape time by a collector; latencies are observed per request by the serving layer.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                0.75, 1.0, 2.5)


class LLMMetrics:
    """The per-request histograms and counters every LLM route observes, on the app's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.time_to_first_token = Histogram(
            "livecast_time_to_first_token_seconds", "Time from request arrival to its first generated token.",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram(
            "livecast_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.",
            buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e_latency = Histogram(
            "livecast_e2e_request_latency_seconds", "Time from request arrival to its last token.",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.requests_finished = Counter(
            "livecast_request_finished", "Requests finished, by finish reason.", ["finish_reason"],
            registry=self.registry)
        self.requests_rejected = Counter(
            "livecast_request_rejected", "Requests refused because the queue was full.", registry=self.registry)

    def close(self) -> None:
        """Leave the registry (an app whose lifespan runs again registers afresh)."""
        for metric in (self.time_to_first_token, self.inter_token_latency, self.e2e_latency,
                       self.requests_finished, self.requests_rejected):
            self.registry.unregister(metric)


class EngineCollector(Collector):
    """Reads one `EngineStats` snapshot per scrape."""

    def __init__(self, stats: Callable[[], object]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        for name, doc, value in (
                ("num_requests_running", "Requests in the running batch.", s.num_running),
                ("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
                ("num_requests_swapped", "Requests preempted to CPU swap.", s.num_swapped),
                ("kv_cache_usage_ratio", "Fraction of device KV-cache blocks in use.", s.kv_cache_usage),
                ("cpu_swap_usage_ratio", "Fraction of CPU swap blocks in use.", s.cpu_swap_usage),
                ("prefix_cache_hit_rate", "Prefix-cache block hits per lookup since start.",
                 s.prefix_cache_hit_rate)):
            yield GaugeMetricFamily(f"livecast_{name}", doc, value=value)
        for name, doc, value in (
                ("prompt_tokens", "Prompt tokens prefilled.", s.prompt_tokens_total),
                ("generation_tokens", "Tokens generated.", s.generation_tokens_total),
                ("num_preemptions", "Sequence preemptions.", s.num_preemptions_total),
                ("spec_draft_tokens", "Speculative draft tokens proposed.", s.spec_draft_tokens_total),
                ("spec_accepted_tokens", "Speculative draft tokens accepted.", s.spec_accepted_tokens_total),
                ("spec_verify_steps", "Speculative verifications (a draft run checked in one step).",
                 s.spec_verify_steps_total)):
            yield CounterMetricFamily(f"livecast_{name}", doc, value=value)

    def describe(self):
        return []  # collected lazily: the engine may not exist when the collector is registered
