"""Merging replicas' /metrics: one valid exposition, every sample labelled by its replica."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from livecast.services.scale.metrics import merge
from tests.services.conftest import running_server, tiny_settings


def exposition(requests: int, queue: float, latencies: list[float]) -> str:
    """What a replica's prometheus_client registry renders: counter, gauge, histogram, labels
    with characters that need escaping."""
    registry = CollectorRegistry()
    counter = Counter("livecast_requests", "Requests served.", ["route"], registry=registry)
    counter.labels(route='/v1/chat "completions"\\n').inc(requests)
    counter.labels(route="/generate").inc(1)
    Gauge("livecast_queue_depth", "Waiting requests.\nSecond line.", registry=registry).set(queue)
    hist = Histogram("livecast_ttft_seconds", "Time to first token.", buckets=(0.1, 1.0), registry=registry)
    for v in latencies:
        hist.observe(v)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value; raises if the text is not a valid exposition or a series repeats."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def test_merged_exposition_parses_and_keeps_every_replicas_values():
    texts = {"llm-1": exposition(5, 2, [0.05, 0.5, 3.0]), "llm-0": exposition(7, 0, [0.2])}
    merged = merge(texts)
    got = samples(merged)
    route = '/v1/chat "completions"\\n'
    assert got[("livecast_requests_total", frozenset({("route", route), ("replica", "llm-1")}))] == 5
    assert got[("livecast_requests_total", frozenset({("route", route), ("replica", "llm-0")}))] == 7
    assert got[("livecast_queue_depth", frozenset({("replica", "llm-1")}))] == 2
    assert got[("livecast_ttft_seconds_bucket", frozenset({("le", "1.0"), ("replica", "llm-1")}))] == 2
    assert got[("livecast_ttft_seconds_bucket", frozenset({("le", "+Inf"), ("replica", "llm-1")}))] == 3
    assert got[("livecast_ttft_seconds_count", frozenset({("replica", "llm-0")}))] == 1
    assert got[("livecast_ttft_seconds_sum", frozenset({("replica", "llm-1")}))] == pytest.approx(3.55)
    # every sample labelled; one HELP and one TYPE per family; families sorted, replicas in id order
    assert all(dict(labels).get("replica") in texts for _, labels in got)
    assert len(got) == 2 * len(samples(texts["llm-0"]))
    helps = [line.split()[2] for line in merged.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps)) and helps == sorted(helps)
    assert "# HELP livecast_queue_depth Waiting requests.\\nSecond line." in merged
    lines = merged.splitlines()
    assert lines.index('livecast_queue_depth{replica="llm-0"} 0.0') < lines.index('livecast_queue_depth{replica="llm-1"} 2.0')
    assert merge(texts) == merged  # deterministic


def test_clashing_labels_bad_lines_and_odd_replica_ids():
    text = ('# HELP up Whether up.\n# TYPE up gauge\nup{replica="inner",zone="a"} 1 1700000000000\n'
            'this is not a sample\nbroken{le="1" 3\n\n# some comment\nstray_metric 4e3\n'
            'nan_metric NaN\n')
    merged = merge({'odd"id\\': text, "b": "garbage only\n"})
    got = samples(merged)
    assert got[("up", frozenset({("exported_replica", "inner"), ("zone", "a"), ("replica", 'odd"id\\')}))] == 1
    assert got[("stray_metric", frozenset({("replica", 'odd"id\\')}))] == 4000
    assert "1700000000000" in merged  # timestamps pass through
    assert len(got) == 3 + 0  # nan_metric is the third; garbage dropped
    assert merge({}) == "" and merge({"a": ""}) == ""


def test_real_server_metrics_merge(tiny_llama_path):
    with running_server(tiny_settings(tiny_llama_path)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/v1/completions", json={"model": "tiny", "prompt": "hello",
                                                      "max_tokens": 3}).status_code == 200
            first = http.get("/metrics").text
            http.post("/v1/completions", json={"model": "tiny", "prompt": "hi again", "max_tokens": 3})
            second = http.get("/metrics").text
    single = samples(first)
    merged = samples(merge({"r0": first, "r1": second}))
    assert len(merged) == len(single) + len(samples(second))
    # a per-replica value survives: the family that counts finished requests differs between the two
    counts = {k: v for k, v in single.items() if "request" in k[0] and k[0].endswith("_total")}
    assert counts, sorted({k[0] for k in single})
    for (name, labels), value in counts.items():
        assert merged[(name, labels | {("replica", "r0")})] == value
    assert any(merged[(n, l | {("replica", "r1")})] > v for (n, l), v in counts.items())
