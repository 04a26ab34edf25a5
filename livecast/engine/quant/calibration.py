"""Calibration and held-out text that ship with the project (nothing is downloaded).

The bundled `data/calibration.txt` (prose, chat turns, code) is topped up with the docstrings of
Python standard-library modules, which every install has. Calibration and held-out text come from
disjoint module lists, so perplexity in `bench quant` is measured on text AWQ never saw.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch

BUNDLED = Path(__file__).with_name("data") / "calibration.txt"
CALIBRATION_MODULES = ("collections", "itertools", "functools", "pathlib", "json", "argparse", "logging",
                       "threading", "subprocess", "datetime", "random", "statistics", "textwrap", "csv")
HELDOUT_MODULES = ("asyncio", "email", "http.client", "sqlite3", "unittest", "decimal", "fractions",
                   "heapq", "shutil", "tarfile", "zipfile", "calendar", "difflib", "string")


def module_docs(names: tuple[str, ...]) -> list[str]:
    """Each module's docstring and those of its public classes and functions, in a fixed order."""
    texts = []
    for name in names:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) \
                    and getattr(obj, "__module__", "").startswith(name):
                docs.append(inspect.getdoc(obj))
        texts.extend(d for d in docs if d and len(d) > 80)
    return texts


def calibration_texts(path: str | Path | None = None) -> list[str]:
    """Paragraphs of `path` (one text per blank-line-separated block), or the bundled corpus."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        if not paragraphs:
            raise ValueError(f"calibration file {str(path)!r} has no text")
        return paragraphs
    bundled = [p.strip() for p in BUNDLED.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return bundled + module_docs(CALIBRATION_MODULES)


def heldout_texts() -> list[str]:
    return module_docs(HELDOUT_MODULES)


def token_blocks(tokenizer, texts: list[str], num_blocks: int, block_len: int) -> torch.Tensor:
    """(num_blocks, block_len) token ids: the texts joined with EOS, cut into equal blocks."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False) + [eos]
        if len(ids) >= num_blocks * block_len:
            break
    available = len(ids) // block_len
    if available == 0:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one block of {block_len}")
    num_blocks = min(num_blocks, available)
    return torch.tensor(ids[:num_blocks * block_len]).view(num_blocks, block_len)
