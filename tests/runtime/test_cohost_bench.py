"""`livecast bench cohost --url` against a small co-hosting app: all three phases, JSON keys."""
from __future__ import annotations

import json

from livecast.services.bench import cohost
from tests.media.app import build_app
from tests.media.conftest import running


def test_cohost_bench_measures_all_phases(tiny_llama_path, tmp_path, capsys):
    app = build_app(diffusion=dict(resolution=128, latency_probe=True), llm_path=tiny_llama_path)
    out = tmp_path / "cohost.json"
    with running(app) as server:
        assert cohost.main(["--url", server.url, "--size", "128", "--seconds", "2", "--warmup", "0.5",
                            "--llm-requests", "8", "--input-len", "16", "--output-len", "48",
                            "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("video_p95_ms_solo", "video_p95_ms_cohost", "video_fps_solo", "video_fps_cohost",
                "llm_tok_s_solo", "llm_tok_s_cohost"):
        assert key in result, key
    assert result["video_fps_solo"] > 2 and 0 < result["video_p95_ms_solo"] < 2000
    assert result["llm_tok_s_solo"] > 0 and result["llm_tok_s_cohost"] > 0
    assert result["phases"]["llm_cohost"]["completed"] == 8
    table = capsys.readouterr().out
    assert "both together" in table and "LLM TTFT p50 ms" in table
