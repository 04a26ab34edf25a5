"""Compile the C kernels beside this file into one shared library, once per source and machine,
and load it with ctypes.

The build needs a C compiler (`cc`, or `$CC`) and a CPU with AVX2, FMA and F16C; where either is
missing, `library()` returns None with the reason in `unavailable()`, and callers keep their
plain-torch paths. The library is cached under `$LIVECAST_CACHE` (default
`~/.cache/livecast`, the engine's model cache too) by a hash of the sources, flags and compiler, and is written atomically, so
processes that start together (replicas, test workers) build it at most once each and never load
a half-written file. It links the OpenMP runtime PyTorch has already loaded (same soname), so
both share one thread pool.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from livecast.kernels.cpu import cpu_flags

logger = logging.getLogger("livecast.kernels")

SOURCE_DIR = Path(__file__).parent
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared", "-std=c11",
         "-fno-math-errno", "-Wall"]
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")

_F, _I, _L, _P = ctypes.c_float, ctypes.c_int, ctypes.c_long, ctypes.c_void_p
SIGNATURES = {
    "lc_q4_gemm": [_P, _L, _I, _I, _P, _P, _P, _I, _I, _P, _L, _I],
    "lc_q8_gemm": [_P, _L, _I, _I, _P, _P, _I, _P, _L, _I],
    "lc_kv_write": [_P, _L, _P, _L, _I, _I, _I, _P, _P, _L, _P],
    "lc_paged_decode": [_P, _L, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _P, _F, _P, _I],
    "lc_paged_prefill": [_P, _L, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _F, _P, _I, _I],
    "lc_prefill_wide": [_I],
    "lc_dense_gemm": [_P, _L, _I, _I, _P, _I, _I, _P, _L, _I],
    "lc_add_lora": [_P, _L, _P, _L, _I, _I, _I, _I, _P, _P, _I, _I, _P, _P, _I],
    "lc_decode_layers": [_P, _P, _I, _P, _P, _P, _I, _I],  # model, layers, count, step: ctypes structs by address
    "lc_gemm_variant_runs": [ctypes.c_char_p],
    "lc_gemm_set_variant": [ctypes.c_char_p],
}
RESTYPES = {"lc_kv_write": None, "lc_gemm_variant": ctypes.c_char_p}

_reason: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("LIVECAST_CACHE") or Path.home() / ".cache" / "livecast") / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def _library_name(compiler: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.[ch]")):
        digest.update(path.name.encode() + path.read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest.update(" ".join(FLAGS).encode() + version.encode())
    return f"livecast_cpu_{digest.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, *map(str, _sources()), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old name or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (the reason in `unavailable()`); built on first call."""
    global _reason
    if os.environ.get("LIVECAST_NATIVE_KERNELS", "1") == "0":
        _reason = "LIVECAST_NATIVE_KERNELS=0"
        return None
    missing = [f for f in REQUIRED_CPU_FLAGS if f not in cpu_flags()]
    if missing:
        _reason = f"the CPU lacks {', '.join(missing)}"
        return None
    compiler = _compiler()
    if compiler is None:
        _reason = "no C compiler (cc or gcc, or $CC) on PATH"
        return None
    __import__("torch")  # its libgomp must be loaded first, so the library's resolves to it

    lib, errors = None, []
    name = _library_name(compiler)
    # the cache, else a per-user temp dir (a read-only home must not cost the fast path)
    for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"livecast-kernels-{os.getuid()}"):
        path = directory / name
        try:
            if not path.exists():
                logger.info("kernels: compiling the native CPU kernels into %s", path)
                _build(compiler, path)
            lib = ctypes.CDLL(str(path))
            break
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))
            if isinstance(exc, RuntimeError):  # the compiler itself failed: another dir will not help
                break
    if lib is None:
        _reason = f"the native CPU kernels did not build: {'; '.join(errors)}"
        logger.warning("kernels: %s; using the plain-torch paths", _reason)
        return None
    for name, argtypes in {**SIGNATURES, "lc_gemm_variant": []}.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, RESTYPES.get(name, ctypes.c_int)
    _pick_gemm_variant(lib)
    return lib


def _pick_gemm_variant(lib: ctypes.CDLL) -> None:
    """$LIVECAST_GEMM_VARIANT over the library's own pick (the widest this CPU runs); a variant
    the CPU cannot run is refused, not silently replaced."""
    from livecast.kernels.native import quant_gemm  # its launchers import this module

    name = os.environ.get("LIVECAST_GEMM_VARIANT")
    if name:
        try:
            quant_gemm.set_gemm_variant(name, lib)
        except (ValueError, RuntimeError) as exc:
            raise type(exc)(f"LIVECAST_GEMM_VARIANT={name}: {exc}") from None
    elif lib.lc_gemm_variant().decode() != quant_gemm.expected_gemm_variant():
        logger.warning("kernels: the library picked the %s GEMMs where /proc/cpuinfo implies %s",
                       lib.lc_gemm_variant().decode(), quant_gemm.expected_gemm_variant())


def unavailable() -> str | None:
    """Why `library()` is None, or None when it loaded."""
    library()
    return _reason
