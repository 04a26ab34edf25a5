"""The llama.cpp peer: start a user-built `llama-server` binary on a GGUF, wait for it, stop it.

livecast never ships or downloads llama.cpp; `livecast bench serving --peer-llama-server PATH`
takes the binary the user built (docs/BENCHMARKS.md: from the llama-cpp-python source
distribution's vendored llama.cpp, with cmake).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from livecast.services.bench.server import free_port, start_process


def start_llama_server(binary: str, gguf: str | Path, *, threads: int, parallel: int, ctx_per_slot: int,
                       extra_args: list[str] = (), timeout_s: float = 180) -> tuple[subprocess.Popen, str]:
    """`llama-server` on 127.0.0.1 with `parallel` slots of `ctx_per_slot` tokens (and `extra_args`,
    e.g. `--spec-type ngram-mod`); (process, url). Its /health answers 503 while the model loads and
    200 once it serves."""
    path = Path(binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"--peer-llama-server: {binary} is not an executable file")
    port = free_port()
    cmd = [str(path), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "--parallel", str(parallel), "-c", str(parallel * ctx_per_slot), "--no-webui", *extra_args]
    return start_process(cmd, f"http://127.0.0.1:{port}", timeout_s)


def llama_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line for line in text if "version" in line), text[0] if text else "unknown")


def llama_server_spec_types(binary: str) -> list[str]:
    """The draft-free speculation types this build's `--spec-type` offers (`ngram-mod`, `ngram-simple`,
    …); [] for builds without `--spec-type` (older ones speculate only with a draft model)."""
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    for line in (out.stdout + out.stderr).splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "--spec-type":
            return [t for t in words[1].split(",") if t.startswith("ngram")]
    return []
