"""Put quantized weights into a loaded `LlamaForCausalLM`: swap its linears for int4/int8 ones,
and decide per step between the int4 kernel and a dense copy by the number of rows.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from livecast.engine.quant.int4 import Int4Linear, QuantizedWeight
from livecast.engine.quant.int8 import Int8Linear
from livecast.engine.quant.linear import QuantizedLinear
from livecast.engine.quant.measured import measured

MODES = ("auto", "none", "awq", "gguf")
PROBE_TOKENS = (4, 8, 16, 32, 64, 128)
DENSE_MEMORY_HEADROOM = 4  # keep a dense copy only if 4x its size is still free


def targets(num_layers: int) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(engine module, HF modules fused into it) for every linear of the decoder."""
    for i in range(num_layers):
        attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
        yield f"{attn}.qkv_proj", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj")
        yield f"{attn}.o_proj", (f"{attn}.o_proj",)
        yield f"{mlp}.gate_up_proj", (f"{mlp}.gate_proj", f"{mlp}.up_proj")
        yield f"{mlp}.down_proj", (f"{mlp}.down_proj",)


def swap_linears(model: nn.Module, int4: dict[str, QuantizedWeight], int8: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, QuantizedWeight]:
    """Replace each dense linear whose HF parts are all in `int4` (or all in `int8`); returns the
    fused int4 weight of each replaced module."""
    fused: dict[str, QuantizedWeight] = {}
    for target, parts in targets(len(model.layers)):
        old = model.get_submodule(target)
        if all(p in int4 for p in parts):
            fused[target] = QuantizedWeight.cat([int4[p] for p in parts])
            new = Int4Linear(fused[target], old.bias, device, name=target)
        elif all(p in int8 for p in parts):
            new = Int8Linear(torch.cat([int8[p] for p in parts]), old.bias, device)
        elif any(p in int4 or p in int8 for p in parts):
            raise ValueError(f"{target}: its parts {parts} mix quantized and dense or int4 and int8 tensors")
        else:
            continue
        parent, _, attr = target.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
    if "lm_head" in int8:
        model.lm_head = Int8Linear(int8["lm_head"], None, device)
    return fused


def median_s(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def probe_crossover(linears: list[QuantizedLinear], dense: list[torch.Tensor], reps: int = 3
                    ) -> tuple[int | None, torch.dtype]:
    """Smallest step size (rows) from which a dense GEMM beats the quantized kernel for these
    linears (one decoder layer's), at every larger probed size too, and the faster dense dtype;
    None if the quantized kernel always wins."""
    def times(num_tokens: int, dtypes) -> tuple[float, dict[torch.dtype, float]]:
        xs = [torch.randn(num_tokens, m.in_features, dtype=torch.bfloat16) for m in linears]
        t_quant = median_s(lambda: [m.weight_mm(x) for m, x in zip(linears, xs)], reps)
        t_dense = {}
        for dtype in dtypes:
            ws = [w.to(dtype) for w in dense]
            t_dense[dtype] = median_s(lambda: [F.linear(x.to(dtype), w) for x, w in zip(xs, ws)], reps)
        return t_quant, t_dense

    t_quant, t_dense = times(PROBE_TOKENS[-1], (torch.bfloat16, torch.float32))
    dtype = min(t_dense, key=t_dense.get)
    crossover = None
    for num_tokens in reversed(PROBE_TOKENS):  # walk down while dense keeps winning
        if num_tokens != PROBE_TOKENS[-1]:
            t_quant, t_dense = times(num_tokens, (dtype,))
        if t_dense[dtype] >= 0.9 * t_quant:  # a margin, so timing noise does not flip the choice
            break
        crossover = num_tokens
    return crossover, dtype


@torch.inference_mode()
def int8_beats_int4(linears: list[Int4Linear], reps: int = 5) -> bool:
    """Whether per-row int8 kernels beat these int4 ones (one decoder layer's) at decode sizes,
    1 and 8 rows, by 10%, on this machine. PyTorch's CPU int4 kernel is not the faster one
    everywhere: on an AVX2-only EPYC int8 measured 17% faster at both sizes. Measured once per
    machine and layer shape (`measured`), so every engine of every process computes alike."""
    def measure() -> bool:
        int8 = [Int8Linear(m.dequantize()) for m in linears]
        wins = True
        for rows in (1, 8):
            xs = [torch.randn(rows, m.in_features) for m in linears]
            t_int4 = median_s(lambda: [m.weight_mm(x) for m, x in zip(linears, xs)], reps)
            t_int8 = median_s(lambda: [m.weight_mm(x) for m, x in zip(int8, xs)], reps)
            wins = wins and t_int8 < 0.9 * t_int4
        return wins
    shapes = tuple((m.out_features, m.in_features, m.group_size) for m in linears)
    return bool(measured("int8_beats_int4", shapes, measure))


def choose_kernel(model: nn.Module, fused: dict[str, QuantizedWeight], device: torch.device, kernel: str) -> str:
    """`kernel` auto|int4|int8: with int8 (asked for, or measured faster), each int4 linear is
    re-quantized per output row from its dequantized weights (twice the bytes, an extra rounding
    of at most half an int8 step). Returns the kernel used."""
    if kernel == "auto":
        first = [model.get_submodule(t) for t in fused if t.startswith("layers.0.")]
        kernel = "int8" if device.type == "cpu" and first and int8_beats_int4(first) else "int4"
    if kernel == "int8":
        for target in fused:
            old = model.get_submodule(target)
            parent, _, attr = target.rpartition(".")
            setattr(model.get_submodule(parent), attr, Int8Linear(old.dequantize(), old.bias, device))
    return kernel


def attach_dense(model: nn.Module, fused: dict[str, QuantizedWeight], device: torch.device,
                 kernel: str = "int4") -> str:
    """On a CPU, keep a dense copy for large steps where that measured faster and memory allows."""
    if device.type != "cpu" or not fused:
        return f"{kernel} at every step size"
    first = [t for t in fused if t.startswith("layers.0.")]
    linears = [model.get_submodule(t) for t in first]

    def measure() -> list:  # JSON-able: [rows or None, dtype name]
        rows, dtype = probe_crossover(linears, [fused[t].dequantize() for t in first])
        return [rows, str(dtype).removeprefix("torch.")]
    shapes = (kernel, tuple((type(m).__name__, m.out_features, m.in_features) for m in linears))
    min_tokens, dtype_name = measured("dense_crossover", shapes, measure)
    dtype = getattr(torch, dtype_name)
    if min_tokens is None:
        return f"{kernel} at every step size (dense never measured faster)"
    import psutil

    extra = sum(w.codes.numel() for w in fused.values()) * torch.finfo(dtype).bits // 8
    if psutil.virtual_memory().available < DENSE_MEMORY_HEADROOM * extra:
        return f"{kernel} at every step size (a dense copy, {extra / 2**20:.0f} MiB, does not fit)"
    for target, weight in fused.items():
        model.get_submodule(target).set_dense(weight.dequantize(dtype), min_tokens)
    return (f"{kernel} below {min_tokens} tokens/step, a dense {str(dtype).removeprefix('torch.')} copy "
            f"(+{extra / 2**20:.0f} MiB) from {min_tokens}")
