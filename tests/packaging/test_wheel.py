"""`pip wheel .` is a real install: one top-level name with its data inside, installed without
`-e` into a fresh venv, serving chat and the pages from a directory outside the repository."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from livecast.services.bench.server import free_port, start_process, stop_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def _tracked(under: str) -> list[str]:
    """The files git would commit under `under`: tracked, or new and not ignored."""
    return _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", under], cwd=ROOT).stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy of the tracked files: setuptools' build/ in the tree could carry stale modules
    src = tmp_path_factory.mktemp("src")
    for name in _tracked("."):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src])
    (whl,) = out.glob("livecast-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, and the locked dependencies of this one on its path."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])
    # a plain path line: this venv's own .pth files (the editable livecast) are not processed there
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "locked-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_has_one_top_level_name_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
    assert {n.split("/")[0] for n in names} == {"livecast", dist_info}
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["livecast"]
    # every tracked file of the package is inside: modules, pages, C sources and headers, data sets
    assert set(_tracked("livecast")) <= set(names)
    assert {"livecast/web/index.html", "livecast/kernels/native/quant_gemm.c"} <= set(names)


def test_installed_files_stay_under_livecast(venv):
    purelib = Path(_run([venv / "bin" / "python", "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (record,) = purelib.glob("livecast-*.dist-info/RECORD")
    paths = [row[0] for row in csv.reader(record.read_text().splitlines())]
    outside = [p for p in paths if p.split("/")[0] not in ("livecast", record.parent.name)]
    assert outside == ["../../../bin/livecast"]  # the console script, nothing else


def test_installed_wheel_serves_chat_and_pages(venv, tiny_llama_path, tmp_path):
    where = _run([venv / "bin" / "python", "-c", "import livecast, kernels; print(livecast.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    port = free_port()
    proc, url = start_process(
        [str(venv / "bin" / "livecast"), "serve", "--no-diffusion", "--port", str(port), "--model",
         str(tiny_llama_path), "--dtype", "float32", "--kv-cache-gb", "0.0625", "--served-model-name", "tiny",
         "--log-level", "warning"], f"http://127.0.0.1:{port}", timeout_s=300, cwd=str(tmp_path))
    try:
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"{url}/js/common.js", timeout=30).status_code == 200
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        stop_server(proc)
