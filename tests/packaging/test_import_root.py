"""One import root: livecast installs nothing but `livecast`, so from the repository root the
generic names (`kernels` above all, which transformers imports) stay the other distributions'."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_only_livecast_is_a_top_level_package():
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert packages == ["livecast", "tests"]


def test_hugging_face_kernels_wins_in_the_repository_root():
    # `python -c` puts the working directory first on sys.path, as `python -m pytest` does
    code = ("import json, importlib.metadata as md\n"
            "from transformers import PreTrainedModel\n"
            "from diffusers import AutoencoderTiny\n"
            "import kernels\n"
            "dist = md.distribution('kernels')\n"
            "print(json.dumps({'file': kernels.__file__, 'dist': str(dist.locate_file('kernels/__init__.py')),\n"
            "                  'name': dist.metadata['Name']}))")
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["name"] == "kernels"
    assert Path(found["file"]).resolve() == Path(found["dist"]).resolve()


def test_pytest_collects_from_the_root_both_ways():
    # `python -m pytest` (cwd on sys.path) collects the whole suite without an import error ...
    done = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"])
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "error" not in done.stdout.splitlines()[-1]
    # ... and so does the venv's `pytest` script, on the suites that import transformers and diffusers
    pytest_bin = Path(sys.executable).parent / "pytest"
    done = _run([str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/streamdiff",
                 "tests/engine/test_hf_parity.py", "tests/packaging"])
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
