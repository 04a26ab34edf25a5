import json
import time

import pytest
import torch

from livecast.services.bench import kernels as bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the benchmark")
def test_bench_without_gpu_says_so_and_writes_gpu_false(tmp_path, capsys):
    path = tmp_path / "kernels.json"
    assert bench.main(["--json", str(path)]) == 0
    assert "no GPU present" in capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["gpu"] is False and result["bench"] == "kernels"


def test_bench_row_measures_every_peer(device, monkeypatch):
    # The GPU benchmark's per-configuration code on a tiny shape, timed by the wall clock.
    monkeypatch.setattr(bench, "NUM_HEADS", 8)
    monkeypatch.setattr(bench, "NUM_KV_HEADS", 2)
    monkeypatch.setattr(bench, "HEAD_DIM", 64)

    def wall_ms(fn):
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)

    row = bench.measure(batch=2, context_len=40, device=device, time_ms=wall_ms)
    assert set(bench.HEADERS) - {"pct_copy_bw"} <= set(row)
    assert row["path"] == "single" and row["GB/s"] > 0 and row["vs_sdpa"] > 0
    assert row["max_err"] < 2e-2  # bf16 kernel vs SDPA on the same K/V
