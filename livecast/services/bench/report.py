"""Shared output of every `livecast bench …` command: one table on stdout, JSON on request."""
from __future__ import annotations

import json
import platform
import time
from typing import Any, Sequence

import torch


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = "cpu"
    return info


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, sep, *body])


def report(name: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], result: dict[str, Any],
           json_path: str | None) -> None:
    """Print the table and, if asked, write `result` (plus machine facts) as JSON."""
    print(f"== livecast bench {name} ==")
    print(format_table(headers, rows))
    if json_path:
        payload = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(), **result}
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {json_path}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
