"""`livecast bench quant`: what int4 weights cost in quality and buy in memory and time.

Perplexity on held-out text (standard-library docstrings AWQ never calibrated on) of SmolLM2 with
every decoder linear as: the dense checkpoint (the GGUF Q4_1 file dequantized — the only SmolLM2
weights shipped), RTN int4, AWQ int4 (`--awq DIR` from `livecast quantize awq`), and the GGUF's
own Q4_1 blocks run natively by the int4 kernel (with the Q8_0 lm_head as int8). Norms, attention
and the rest run in fp32 in every row, so rows differ by their linears only. Then weight bytes and
the decode-step linear time (all 30 layers' fused linears) per step size, medians: int4 through
the native AVX2 kernel (the default where it builds), through PyTorch's packed op, native int8,
and dense bf16 / fp32.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from livecast.engine.quant.apply import median_s
from livecast.services.bench.report import format_table, report

HEADERS = ["weights", "perplexity", "vs_dense", "linear_MiB", "pct_bf16", "model_MiB", "model_pct_bf16"]
STEP_SIZES = (1, 8, 16, 128)


def _swap(model: nn.Module, linears: dict[str, nn.Module]) -> nn.Module:
    for name, module in linears.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module)
    return model


def _decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


def _bf16_bytes(modules) -> int:
    """Bytes as the engine holds them: float32 tensors (this harness) count as bf16; shared once."""
    tensors = {t.data_ptr(): t for m in modules for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    return sum(t.numel() * (2 if t.dtype == torch.float32 else t.element_size()) for t in tensors.values())


@torch.inference_mode()
def perplexity(model: nn.Module, blocks: torch.Tensor) -> float:
    nll, count = 0.0, 0
    for ids in blocks.split(4):
        logits = model(ids, use_cache=False).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


def variants(path: Path, awq_dir: Path | None, group_size: int):
    """(name, HF model with its decoder linears swapped) for each row, built one at a time."""
    import copy

    from transformers import AutoModelForCausalLM

    from livecast.engine.model_loader import default_gguf_path
    from livecast.engine.quant import awq_format
    from livecast.engine.quant.int4 import Int4Linear, quantize_rtn
    from livecast.engine.quant.int8 import Int8Linear
    from livecast.engine.quant.loading import _native_gguf

    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield "dense (Q4_1 file dequantized)", dense
    yield f"RTN int4 g{group_size}", _swap(copy.deepcopy(dense), {
        n: Int4Linear(quantize_rtn(m.weight, group_size), name=n) for n, m in _decoder_linears(dense).items()})
    if awq_dir is not None:
        awq = AutoModelForCausalLM.from_config(dense.config, dtype=torch.float32).eval()
        from livecast.engine.model_loader import iter_weights

        quantized = {}
        state = dict(awq_format.split_weights(iter_weights(awq_dir), awq_format.read_config(awq_dir)["group_size"],
                                              quantized))
        missing, unexpected = awq.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"{awq_dir} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        awq.tie_weights()
        yield f"AWQ int4 g{awq_format.read_config(awq_dir)['group_size']}", _swap(awq, {
            f"model.{n}": Int4Linear(w, name=n) for n, w in quantized.items()})
    native = copy.deepcopy(dense)
    linears = {}
    for name, value, qtype in _native_gguf(default_gguf_path(), dense.config):
        module = name.removesuffix(".weight")
        if qtype.startswith("Q4"):
            linears[module] = Int4Linear(value, name=module)
        elif qtype == "Q8_0" and dense.config.tie_word_embeddings:
            linears["lm_head"] = Int8Linear(value)
    lm_head = linears.pop("lm_head", None)
    yield "GGUF Q4_1 native, dense lm_head", _swap(native, linears)
    if lm_head is not None:
        yield "GGUF Q4_1 native + Q8_0 lm_head as int8", _swap(native, {"lm_head": lm_head})


def _median_ms(fn, reps: int) -> float:
    return median_s(fn, reps) * 1e3


@torch.inference_mode()
def step_timings(reps: int) -> list[dict]:
    """All decoder linears of SmolLM2 (fused as the engine runs them) per step size, in ms."""
    from livecast.engine.model_loader import default_gguf_path, load_config, resolve_model
    from livecast.engine.quant.apply import targets
    from livecast.engine.quant.int4 import Int4Linear, QuantizedWeight
    from livecast.engine.quant.int8 import Int8Linear
    from livecast.engine.quant.loading import _native_gguf
    from livecast.kernels import native

    path = resolve_model(None)
    config = load_config(path)
    parts = {n.removeprefix("model.").removesuffix(".weight"): v for n, v, q in _native_gguf(default_gguf_path(), config)
             if q.startswith("Q4")}
    layer0 = [QuantizedWeight.cat([parts[p] for p in ps]) for t, ps in targets(1)]
    kernels = {"int4_ms": [Int4Linear(w) for w in layer0]}
    if native.available():  # the native AVX2 kernels, and PyTorch's packed ops they replace
        kernels["int4_aten_ms"] = [Int4Linear(w, kernel="aten") for w in layer0]
        kernels["int8_ms"] = [Int8Linear(w.dequantize()) for w in layer0]
    dense = {dtype: [w.dequantize(dtype) for w in layer0] for dtype in (torch.bfloat16, torch.float32)}
    rows = []
    for num_tokens in STEP_SIZES:
        xs = [torch.randn(num_tokens, w.shape[1]) for w in layer0]
        row = {"tokens": num_tokens}
        for key, modules in kernels.items():
            row[key] = config.num_hidden_layers * _median_ms(lambda: [m(x) for m, x in zip(modules, xs)], reps)
        for dtype, ws in dense.items():
            key = f"{str(dtype).removeprefix('torch.')}_ms"
            row[key] = config.num_hidden_layers * _median_ms(
                lambda: [F.linear(x.to(dtype), w) for x, w in zip(xs, ws)], reps)
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench quant")
    parser.add_argument("--awq", type=Path, default=None, help="AWQ folder from `livecast quantize awq`")
    parser.add_argument("--group-size", type=int, default=64, help="RTN group size (match the AWQ folder's)")
    parser.add_argument("--blocks", type=int, default=16, help="held-out blocks of --block-len tokens")
    parser.add_argument("--block-len", type=int, default=256)
    parser.add_argument("--reps", type=int, default=15, help="timing repetitions (medians reported)")
    parser.add_argument("--rows", default=None, help="only rows whose name contains this (e.g. AWQ)")
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from livecast.engine.model_loader import resolve_model
    from livecast.engine.quant.calibration import heldout_texts, token_blocks

    path = resolve_model(None)
    blocks = token_blocks(AutoTokenizer.from_pretrained(path), heldout_texts(), args.blocks, args.block_len)
    rows, results, dense_ppl, dense_bytes = [], [], None, None
    for name, model in variants(path, args.awq, args.group_size):
        if dense_ppl is not None and args.rows and args.rows not in name:
            continue  # the dense row always runs: every other row is measured against it
        ppl = perplexity(model, blocks)
        linear_bytes = _bf16_bytes(m for n, m in model.named_modules() if n.startswith("model.layers.")
                                   and hasattr(m, "in_features"))
        model_bytes = _bf16_bytes(model.modules())
        dense_ppl, dense_bytes = dense_ppl or ppl, dense_bytes or (linear_bytes, model_bytes)
        results.append({"weights": name, "perplexity": ppl, "vs_dense": ppl / dense_ppl - 1,
                        "decoder_linear_bytes": linear_bytes, "model_bytes": model_bytes})
        rows.append([name, f"{ppl:.3f}", f"{100 * (ppl / dense_ppl - 1):+.2f}%", f"{linear_bytes / 2**20:.1f}",
                     f"{100 * linear_bytes / dense_bytes[0]:.1f}%", f"{model_bytes / 2**20:.1f}",
                     f"{100 * model_bytes / dense_bytes[1]:.1f}%"])
        del model
    timings = [] if args.skip_timings else step_timings(args.reps)
    columns = [k for k in ("int4_ms", "int4_aten_ms", "int8_ms", "bfloat16_ms", "float32_ms") if timings and k in timings[0]]
    print(format_table(["tokens/step", *columns], [[t["tokens"], *(f"{t[k]:.2f}" for k in columns)] for t in timings]))
    report("quant", HEADERS, rows, {"heldout_tokens": blocks.numel(), "perplexity": results,
                                    "decoder_linear_step_ms": timings}, args.json)
    return 0
