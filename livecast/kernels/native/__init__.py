"""C kernels for x86 CPUs (AVX2/FMA/F16C), compiled on first use and called through ctypes: each
`.c` file sits beside a Python launcher that checks shapes and holds the plain-torch reference."""
from __future__ import annotations

from livecast.kernels.native.build import library, unavailable


def available() -> bool:
    return library() is not None


__all__ = ["available", "library", "unavailable"]
