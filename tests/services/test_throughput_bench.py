"""`livecast bench throughput` end to end on a tiny model: both sides, sampled, JSON written."""
from __future__ import annotations

import json

from livecast.services.bench import throughput


def test_throughput_bench_runs_both_sides_with_sampling(tiny_llama_path, tmp_path, capsys):
    out = tmp_path / "throughput.json"
    assert throughput.main(["--model", str(tiny_llama_path), "--dtype", "float32", "--num-requests", "4",
                            "--hf-sequential-requests", "1", "--hf-static-requests", "2", "--hf-batch-size", "2",
                            "--kv-cache-gb", "0.05", "--temperature", "1.0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["temperature"] == 1.0 and result["engine_output_tokens"] > 0
    assert result["engine_output_tok_s"] > 0 and result["hf_static_batch_output_tok_s"] > 0
    assert result["engine_vs_hf_static_batch"] == result["engine_output_tok_s"] / result["hf_static_batch_output_tok_s"]
    assert "HF generate, static batch 2" in capsys.readouterr().out
