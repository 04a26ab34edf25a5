"""Triton kernels for the paged-attention engine: each module holds a kernel, its launcher and a
plain-torch reference that reads the same layout."""
from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """True when the Triton kernels can run here: triton is installed and there is a CUDA device,
    or `TRITON_INTERPRET=1` asks for the (slow, exact) CPU interpreter.

    It looks triton up without importing it: triton fixes GPU-or-interpreter mode for the whole
    process when first imported, so a mere check must not be what imports it.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
        return True
    import torch

    return torch.cuda.is_available()
