"""`livecast bench diffusion` runs end to end (tiny settings) and writes the agreed JSON keys."""
from __future__ import annotations

import json

from livecast.services.bench import diffusion
from livecast.streamdiff.demo import demo_weights_shipped


def test_bench_diffusion_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = diffusion.main(["--frames", "2", "--rounds", "1", "--streams", "1", "2",
                           "--batch-steps", "1", "--turbo-frames", "0", "--json", str(path)])
    assert code == 0
    result = json.loads(path.read_text())
    assert result["bench"] == "diffusion"
    assert result["stream_fps"] > 0 and result["diffusers_fps"] > 0
    assert set(result["multi_stream_fps"]) == {"1", "2"}
    assert "sd_turbo_shape_fps" not in result  # skipped with --turbo-frames 0
    # the trained demo, once shipped, is timed against demo-random in the same run
    assert ("trained_demo_fps" in result) == demo_weights_shipped()
    if demo_weights_shipped():
        assert result["trained_demo_fps"] > 0 and result["random_demo_fps"] > 0
    assert "StreamBatcher x2" in capsys.readouterr().out
