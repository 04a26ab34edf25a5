"""`livecast bench lora` (LLM section) end to end on the tiny model: 2 adapters, batch 2, JSON written."""
from __future__ import annotations

import json

from livecast.services.bench import lora as bench


def test_lora_bench_llm_section_writes_every_figure(tiny_llama_path, tmp_path, capsys):
    path = tmp_path / "lora.json"
    assert bench.main(["--model", str(tiny_llama_path), "--batches", "2", "--adapters", "2", "--rank", "4",
                       "--max-tokens", "3", "--rounds", "1", "--kv-cache-gb", "0.05", "--merged-dtype", "float32",
                       "--merged-engines", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    llm = result["llm"]
    assert result["bench"] == "lora (llm)" and "video" not in result
    assert llm["adapters"] == 2 and llm["rank"] == 4 and llm["batches"] == [2]
    rows = llm["results"]["2"]
    mixed = [label for label in rows if label.startswith("2 adapters mixed, ")]
    assert "base" in rows and "2 adapters mixed, torch" in mixed and any(k.startswith("1 adapter, ") for k in rows)
    assert "naive: 2 merged engines (float32; 1 measured, time scaled)" in rows
    assert all(r["tok_s_best"] > 0 for r in rows.values()) and rows["base"]["ratio_best"] == 1.0
    naive = llm["naive_merged"]
    # one engine measured on its share (1 request of 3 tokens), scaled to both
    assert naive["engines_measured"] == 1 and naive["per_batch"]["2"]["tokens"] == 2 * 3
    assert naive["dtype"] == "float32" and naive["all_engines_bytes"] == 2 * naive["dense_model_bytes"]
    memory = llm["memory"]
    # q,v only holds fewer tensors than all seven targets, and 2 resident slots of rank 4 hold more
    assert 0 < memory["adapter_bytes_qv"] < memory["adapter_bytes_all_targets"] < memory["base_weights_bytes"]
    assert memory["adapter_vs_base_all_targets"] == memory["adapter_bytes_all_targets"] / memory["base_weights_bytes"]
    assert memory["slots_bytes"] > 0 and memory["slots_vs_base"] == memory["slots_bytes"] / memory["base_weights_bytes"]
    assert memory["adapter_dtype"] in ("float32", "bfloat16", "float16")
    stall = llm["load_stall"]
    assert stall["load_seconds"] > 0 and stall["first_step_on_new_adapter_ms"] > 0 and stall["step_ms_before_max"] > 0
    out = capsys.readouterr().out
    assert "== livecast bench lora (llm) ==" in out and "keep" in out and "of the base weights" in out
