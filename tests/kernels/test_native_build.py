"""Where the native kernels build, and what happens where they cannot: run in fresh processes,
since a process builds and loads the library once."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import torch
from livecast.kernels import native
from livecast.engine.quant.int4 import Int4Linear, quantize_rtn
torch.manual_seed(0)
weight = quantize_rtn(torch.randn(32, 64), 32)
linear = Int4Linear(weight)
x = torch.randn(3, 64)
err = (linear(x).float() - x @ weight.dequantize().t()).abs().max().item()
print(native.available(), linear.kernel, round(err, 3), native.library() and native.library()._name)
print(native.unavailable())
"""


def _probe(**env) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_builds_into_the_cache_once_and_reloads(tmp_path):
    first = _probe(LIVECAST_CACHE=str(tmp_path))
    assert first[0].startswith("True native") and str(tmp_path / "kernels") in first[0]
    built = list((tmp_path / "kernels").glob("livecast_cpu_*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("tmp*"))  # no half-written files left
    mtime = built[0].stat().st_mtime_ns
    assert _probe(LIVECAST_CACHE=str(tmp_path))[0] == first[0]
    assert built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_an_unwritable_cache_falls_back_to_a_temp_dir():
    out = _probe(LIVECAST_CACHE="/proc/livecast-cannot-create")
    assert out[0].startswith("True native") and "livecast-kernels-" in out[0]


def test_a_failing_compiler_keeps_the_torch_kernels_and_says_why(tmp_path):
    out = _probe(LIVECAST_CACHE=str(tmp_path), CC="false")
    available, kernel, err = out[0].split()[:3]
    assert (available, kernel) == ("False", "aten") and float(err) < 0.5  # PyTorch's packed op, still right
    assert "did not build" in out[1]
    out = _probe(LIVECAST_NATIVE_KERNELS="0")
    assert out[0].split()[:2] == ["False", "aten"] and "LIVECAST_NATIVE_KERNELS=0" in out[1]
