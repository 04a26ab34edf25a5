"""`livecast bench scale`: its measurement on the folder's cluster (the whole command starts three
clusters in turn, a few minutes on 2 cores: run by hand, not in the suite)."""
from __future__ import annotations

from argparse import Namespace

import pytest

from livecast.services.bench.scale import measure

TINY = dict(num_distinct=4, distinct_words=24, num_systems=3, per_system=3, system_words=96, user_words=6,
            concurrency=2, output_len=4, seed=0)


def check_row(row: dict, workload: str, replicas: int) -> None:
    assert row["workload"] == workload and row["replicas"] == replicas
    assert row["completed"] == row["num_requests"] > 0, row
    assert row["output_throughput"] > 0
    assert 0 < row["ttft_p50_ms"] <= row["ttft_p95_ms"] < 60_000
    assert 0.0 <= row["prefix_hit_rate"] <= 1.0
    assert len(row["prefilled_per_replica"]) == replicas and sum(row["prefilled_per_replica"].values()) > 0
    assert set(row["prefilled_per_replica"]) <= set(row["cpu_s"]) and {"ingress+client", "ray"} <= set(row["cpu_s"])
    assert sum(row["cpu_s"][rid] for rid in row["prefilled_per_replica"]) > 0  # the replicas did the work


@pytest.mark.ray
def test_measure_on_a_running_cluster(cluster):
    args = Namespace(**TINY)
    distinct = measure(cluster, "2:prefix", "distinct", args, seed=1)
    check_row(distinct, "distinct", 2)
    shared = measure(cluster, "2:prefix", "shared", args, seed=1)
    check_row(shared, "shared", 2)
    # 3 system prompts x 3 requests, ample KV: under prefix routing only each prompt's first request misses
    assert shared["prefix_hit_rate"] > 0.3, shared
    assert sum(shared["requests_per_replica"].values()) == 9
