"""Merge the Prometheus text expositions of many replicas into one, each sample labelled by replica.

Every replica exposes the same families (`livecast_*`, process and Python collectors), so a plain
concatenation would repeat HELP/TYPE lines and series, which scrapers reject. `merge` keeps one
HELP/TYPE per family and adds `replica="<id>"` to every sample; a replica's own `replica` label,
if any, becomes `exported_replica` (Prometheus' rule for clashing target labels). Families come
out sorted by name; within one, replicas in id order, each keeping its own sample order (so
histogram buckets stay in `le` order). Values and timestamps pass through as written.
Lines that do not parse are dropped rather than raised on: one bad replica must not blank the
ingress' /metrics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*\"")
# sample names a family may expose beside its own (histogram, summary, counter, info, gaugehistogram)
_SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total", "_info", "_gsum", "_gcount")


@dataclass(slots=True)
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)  # rendered lines, replica label added


def _label_value(line: str, i: int) -> tuple[str, int]:
    """The raw (still escaped) value starting after the opening quote at `i`; the index after its
    closing quote. Escapes are kept as written, so re-emitting them is exact."""
    j = i
    while j < len(line):
        if line[j] == "\\":
            j += 2
        elif line[j] == '"':
            return line[i:j], j + 1
        else:
            j += 1
    raise ValueError("unterminated label value")


def _parse_sample(line: str) -> tuple[str, list[tuple[str, str]], str]:
    """`name{a="x",b="y"} value [timestamp]` -> (name, [(label, raw value)], "value [timestamp]")."""
    m = _NAME.match(line)
    if m is None:
        raise ValueError("no metric name")
    name, i, labels = m.group(), m.end(), []
    while i < len(line) and line[i] in " \t":
        i += 1
    if i < len(line) and line[i] == "{":
        i += 1
        while True:
            while i < len(line) and line[i] in " \t,":
                i += 1
            if i < len(line) and line[i] == "}":
                i += 1
                break
            lm = _LABEL_NAME.match(line, i)
            if lm is None:
                raise ValueError("bad label")
            value, i = _label_value(line, lm.end())
            labels.append((lm.group(1), value))
    rest = line[i:].split()
    if not 1 <= len(rest) <= 2:
        raise ValueError("bad value")
    float(rest[0])  # "+Inf", "NaN" and exponents parse; garbage raises
    return name, labels, " ".join(rest)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family_of(name: str, current: str | None) -> str:
    if current is not None and (name == current or any(name == current + s for s in _SUFFIXES)):
        return current
    return name  # a sample outside the declared family: an untyped family of its own


def merge(texts: dict[str, str]) -> str:
    """`texts`: replica id -> that replica's /metrics text (format 0.0.4). Returns one exposition."""
    families: dict[str, _Family] = {}
    for replica_id in sorted(texts):
        replica = f'replica="{_escape(replica_id)}"'
        current: str | None = None  # the family the last HELP/TYPE line declared
        for raw in texts[replica_id].splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and _NAME.fullmatch(parts[2]):
                    current = parts[2]
                    family = families.setdefault(current, _Family())
                    text = parts[3] if len(parts) == 4 else ""
                    if parts[1] == "HELP" and family.help is None:
                        family.help = text
                    elif parts[1] == "TYPE" and family.type is None:
                        family.type = text
                continue
            try:
                name, labels, value = _parse_sample(line)
            except ValueError:
                continue
            fam = families.setdefault(_family_of(name, current), _Family())
            rendered = [f'{"exported_replica" if k == "replica" else k}="{v}"' for k, v in labels]
            fam.samples.append(f"{name}{{{','.join([*rendered, replica])}}} {value}")
    out = []
    for name in sorted(families):
        family = families[name]
        if not family.samples:
            continue
        if family.help is not None:
            out.append(f"# HELP {name} {family.help}".rstrip())
        if family.type is not None:
            out.append(f"# TYPE {name} {family.type}")
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""
