"""Choices the engine times at load, kept per machine so that every process computes alike.

Whether int8 beats int4 kernels, and from how many rows a dense copy beats them, are timed on the
machine at load. Each choice decides which kernel rounds which step, so two processes whose timings
fell either side of a margin would give different greedy text for the same request (a server
restarted, a speculative server against a plain one, a replica against another). The first process
on a machine times a choice and writes it to a small JSON file, keyed by what the timing depends
on: the CPU (model and flags), torch, the native GEMM variant and the layer shapes; later processes
read it back. `LIVECAST_CACHE_DIR` moves the file (default `~/.cache/livecast`);
`LIVECAST_REMEASURE=1` times again and overwrites. An unwritable folder only costs the reuse.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

FILE_NAME = "measured-choices.json"
_memory: dict[str, Any] = {}  # this process's choices (also where the file cannot be written)


def cache_path() -> Path:
    root = os.environ.get("LIVECAST_CACHE_DIR") or Path.home() / ".cache" / "livecast"
    return Path(root) / FILE_NAME


@lru_cache(maxsize=1)
def machine() -> str:
    """What a timing depends on besides the shapes: CPU model and flags, torch, GEMM variant."""
    import torch

    cpu = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
        cpu = " ".join(fields.get(k, "").strip() for k in ("model name", "flags"))
    except OSError:
        cpu = platform.processor()
    try:
        from livecast.kernels.native.quant_gemm import gemm_variant

        variant = gemm_variant()
    except Exception:  # noqa: BLE001 - no native library: the torch kernels decide alone
        variant = "none"
    return f"{cpu}|torch {torch.__version__}|{variant}|threads {torch.get_num_threads()}"


def _key(name: str, shapes: Any) -> str:
    return hashlib.sha256(f"{name}|{shapes!r}|{machine()}".encode()).hexdigest()[:32]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measured(name: str, shapes: Any, measure: Callable[[], Any]) -> Any:
    """The JSON-able result of `measure()` for (name, shapes) on this machine: from this process,
    else from the machine's file, else timed now and written there."""
    key = _key(name, shapes)
    remeasure = os.environ.get("LIVECAST_REMEASURE") == "1"
    if key in _memory and not remeasure:
        return _memory[key]
    path = cache_path()
    stored = _read(path)
    if key in stored and not remeasure:
        _memory[key] = stored[key]["value"]
        return _memory[key]
    value = measure()
    _memory[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = _read(path)  # another process may have written meanwhile: keep its entries
        stored[key] = {"name": name, "shapes": repr(shapes), "value": value}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(stored, tmp, indent=1)
        os.replace(tmp.name, path)
    except OSError:
        pass
    return value


def forget() -> None:
    """Drop this process's choices (tests; the file stays)."""
    _memory.clear()
