"""Demo sets: the one JSON format shared by hand-written few-shot files and Auto-CoT output.

    {"format": "livecast-cot-demos/1", "name": "arith", "answer_format": "number",
     "source": "manual" | "auto-cot",
     "demos": [{"question": "...", "rationale": "...", "answer": "..."}, ...]}

Each demo renders as "Q: {question}\nA: {rationale} The answer is {answer}." Auto-CoT files add
per-demo fields (cluster, distance, rejected candidates) and a top-level "build" record; the
loader keeps them but only needs the three strings. Sets are named on the command line as
`NAME=PATH` (`--cot-demos arith=demos.json`) and looked up by name per request.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from livecast.services.llm.cot.answers import check_format

DEMO_FORMAT = "livecast-cot-demos/1"


@dataclass(slots=True)
class Demo:
    question: str
    rationale: str
    answer: str

    def __post_init__(self) -> None:
        for name in ("question", "rationale", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"demo {name} must be a non-empty string, got {value!r}")
            setattr(self, name, value.strip())


@dataclass(slots=True)
class DemoSet:
    name: str
    demos: list[Demo]
    answer_format: str = "number"
    source: str = "manual"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # Auto-CoT build records

    def __post_init__(self) -> None:
        if not self.demos:
            raise ValueError(f"demo set {self.name!r} has no demos")
        check_format(self.answer_format, f"demo set {self.name!r} answer_format")


def parse_demos(items: Any, where: str) -> list[Demo]:
    """Demos from a JSON list of {question, rationale, answer}; errors name the bad entry."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where} must be a non-empty list of demos")
    demos = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{where}[{i}] must be an object with question, rationale and answer")
        missing = [k for k in ("question", "rationale", "answer") if k not in item]
        if missing:
            raise ValueError(f"{where}[{i}] lacks {', '.join(repr(k) for k in missing)}")
        try:
            demos.append(Demo(item["question"], item["rationale"], str(item["answer"])
                              if isinstance(item["answer"], (int, float)) else item["answer"]))
        except ValueError as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from None
    return demos


def load_demo_set(path: str | Path, name: str | None = None) -> DemoSet:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"demo file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"demo file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "demos" not in data:
        raise ValueError(f"demo file {str(path)!r} must be a JSON object with a 'demos' list "
                         f"(format {DEMO_FORMAT})")
    if data.get("format", DEMO_FORMAT) != DEMO_FORMAT:
        raise ValueError(f"demo file {str(path)!r} has format {data['format']!r}; expected {DEMO_FORMAT!r}")
    demos = parse_demos(data["demos"], f"{path}: demos")
    extra = {k: v for k, v in data.items() if k not in ("format", "name", "answer_format", "source", "demos")}
    return DemoSet(name or data.get("name") or path.stem, demos, data.get("answer_format", "number"),
                   data.get("source", "manual"), extra)


def save_demo_set(demo_set: DemoSet, path: str | Path, records: list[dict] | None = None) -> None:
    """Write `demo_set`; `records` (one dict per demo, with the same question) add per-demo fields."""
    demos = []
    for i, demo in enumerate(demo_set.demos):
        entry = {"question": demo.question, "rationale": demo.rationale, "answer": demo.answer}
        if records is not None:
            entry.update({k: v for k, v in records[i].items() if k not in entry})
        demos.append(entry)
    payload = {"format": DEMO_FORMAT, "name": demo_set.name, "answer_format": demo_set.answer_format,
               "source": demo_set.source, "demos": demos, **demo_set.extra}
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def load_named_sets(specs: Iterable[str]) -> dict[str, DemoSet]:
    """`NAME=PATH` strings (the `--cot-demos` flag) → demo sets by name; loaded once at startup."""
    sets: dict[str, DemoSet] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--cot-demos expects NAME=PATH, got {spec!r}")
        if name in sets:
            raise ValueError(f"--cot-demos names {name!r} twice")
        sets[name] = load_demo_set(path, name)
    return sets

