"""Kernel tests run on CUDA when present, else on the CPU under Triton's interpreter.

Triton reads `TRITON_INTERPRET` when it decorates a kernel, its own `tl.*` helpers included, so it
is set here, before the modules below import `kernels.*` and so triton. Setting it for the whole
session is the price: anything that runs later sees it too.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import pytest
import torch

# A module collected before this file (tests/engine sorts first) that imported triton has fixed
# it to GPU mode for the session; say so instead of failing with "0 active drivers".
IMPORTED_TOO_EARLY = (not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
                      and "triton" in sys.modules)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16: a few ulps of the output; the interpreter also truncates fp32→bf16 casts where a GPU
# rounds to nearest.
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}


@pytest.fixture(autouse=True)
def _interpreter_in_time():
    if IMPORTED_TOO_EARLY:
        pytest.fail("triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
                    "export TRITON_INTERPRET=1 or set it in a conftest that loads earlier")


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def check_close():
    def check(actual: torch.Tensor, expected: torch.Tensor) -> None:
        assert not actual.isnan().any(), "kernel left NaN (unwritten or poisoned) elements"
        torch.testing.assert_close(actual, expected, **TOLERANCES[expected.dtype])
    return check


@pytest.fixture
def poisoned(monkeypatch):
    """Context manager: every tensor torch.empty/empty_like allocates inside it starts as NaN, so an
    output element (or split-K partial) a kernel forgets to write fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_filled(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    @contextlib.contextmanager
    def poisoning():
        with monkeypatch.context() as patch:
            patch.setattr(torch, "empty", lambda *a, **k: nan_filled(empty(*a, **k)))
            patch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(empty_like(*a, **k)))
            yield
    return poisoning


@pytest.fixture
def paged_kv(device):
    """Factory: random K/V caches holding `context_lens` tokens per sequence in shuffled blocks.

    Everything a kernel must not read is NaN: a poison block that every unused block-table entry
    points at, and the slots past each context in its last block.
    """
    def make(context_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
             spare_blocks: int = 3):
        blocks_per_seq = [-(-n // block_size) for n in context_lens]
        num_blocks = sum(blocks_per_seq) + spare_blocks + 1
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        k_cache = torch.randn(shape, device=device).to(dtype)
        v_cache = torch.randn(shape, device=device).to(dtype)
        poison = num_blocks - 1
        ids = torch.randperm(num_blocks - 1).tolist()
        block_tables = torch.full((len(context_lens), max(blocks_per_seq) + 2), poison, dtype=torch.int32)
        for seq, (n, nb) in enumerate(zip(context_lens, blocks_per_seq)):
            block_tables[seq, :nb] = torch.tensor(ids[:nb], dtype=torch.int32)
            ids = ids[nb:]
            if n % block_size:
                for cache in (k_cache, v_cache):
                    cache[block_tables[seq, nb - 1], n % block_size:] = float("nan")
        k_cache[poison] = float("nan")
        v_cache[poison] = float("nan")
        context_lens = torch.tensor(context_lens, dtype=torch.int32, device=device)
        return k_cache, v_cache, block_tables.to(device), context_lens
    return make
