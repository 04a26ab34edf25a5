"""`livecast bench kernels`: paged decode attention against the device's copy bandwidth and its peers.

Decode reads every cached K/V byte once, so its ceiling is memory bandwidth: the table reports
the bytes the kernel must move over its time, as GB/s and as a share of a large device-to-device
copy measured in the same run. Peers on the same inputs: the per-sequence torch reference
(`paged_attention_decode_ref`, gather + fp32 softmax) and `scaled_dot_product_attention` on K/V
already gathered into dense `(batch, kv_heads, context, head_dim)` tensors, which leaves the
paging cost out of SDPA's time. GPU only: on a CPU it says so and measures only the LoRA and GEMM rows.
LoRA rows: the batched per-row-adapter update (Triton BGMV on CUDA, the native kernel on a CPU)
against its torch reference.
GEMM rows (any x86 machine the native kernels load on): one SmolLM2-135M layer's int4 and int8
GEMMs at decode sizes in every instruction-set variant the CPU runs (AVX2, AVX-VNNI, AVX-512
VNNI), on one thread's CPU clock in alternating rounds, so that load from other work slows each
alike: read the ratio to AVX2, not the microseconds.
Prefill attention rows (same machines): the native causal attention over the paged cache
(`kernels.native.paged_prefill`) against the engine's gather + SDPA path on SmolLM2's shape, a
fresh prompt and a chunk after a cached prefix, in alternating rounds: one thread's CPU clock
and wall time on two threads; read the ratios.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from livecast.services.bench.report import report

HEADERS = ["batch", "context", "path", "kernel_us", "single_us", "split_us", "ref_us", "sdpa_us",
           "GB/s", "pct_copy_bw", "vs_ref", "vs_sdpa", "max_err"]
# Llama-3-8B's attention shape: 32 query heads over 8 kv heads of 128, bf16, 16-token blocks.
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
# LoRA rows: 8 adapters of rank 16 on SmolLM2-135M's fused qkv (576 -> 960), slots mixed with -1.
LORA_HEADERS = ["rows", "path", "kernel_us", "ref_us", "vs_ref", "max_err"]
LORA_SLOTS, LORA_RANK, LORA_K, LORA_N = 8, 16, 576, 960
# GEMM rows: SmolLM2-135M's linears as (out, in): q|k|v, o, gate|up, down; q4 in groups of 32.
GEMM_HEADERS = ["bits", "rows", "variant", "layer_us", "vs_avx2"]
GEMM_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))
# prefill attention rows: SmolLM2-135M's 9 heads over 3 kv heads of 64, float32, 16-token blocks
PREFILL_HEADERS = ["queries", "context", "native_cpu_us", "sdpa_cpu_us", "cpu_vs_sdpa", "native_wall_us",
                   "sdpa_wall_us", "wall_vs_sdpa", "max_err"]
PREFILL_SHAPE = (9, 3, 64, 16)


def copy_bandwidth_gbps(num_bytes: int = 2 * 2**30) -> float:
    """Best device-to-device copy rate: read + write bytes over time, as the attention rows count."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dst.copy_(src)  # warm-up
    best_ms = float("inf")
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best_ms = min(best_ms, start.elapsed_time(end))
    del src, dst
    return 2 * num_bytes / best_ms / 1e6


def decode_inputs(batch: int, context_len: int, device: str) -> dict:
    """Random q and a shuffled paged cache holding `context_len` tokens for each of `batch` sequences."""
    blocks_per_seq = -(-context_len // BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    return dict(
        q=torch.randn(batch, NUM_HEADS, HEAD_DIM, device=device).to(DTYPE),
        k_cache=torch.randn(shape, device=device).to(DTYPE),
        v_cache=torch.randn(shape, device=device).to(DTYPE),
        block_tables=torch.randperm(num_blocks, device=device).to(torch.int32).view(batch, blocks_per_seq),
        context_lens=torch.full((batch,), context_len, dtype=torch.int32, device=device),
        scale=HEAD_DIM ** -0.5,
    )


def measure(batch: int, context_len: int, device: str, time_ms: Callable[[Callable], float]) -> dict:
    from livecast.kernels.cache import gather_paged
    from livecast.kernels.paged_attention import paged_attention_decode, paged_attention_decode_ref, split_k_default

    x = decode_inputs(batch, context_len, device)
    max_context_len = x["block_tables"].shape[1] * BLOCK_SIZE  # the bound the launcher decides on
    args = (x["q"], x["k_cache"], x["v_cache"], x["block_tables"], x["context_lens"], x["scale"])

    def dense(cache: torch.Tensor) -> torch.Tensor:  # (batch, kv_heads, context, head_dim) for SDPA
        return torch.stack([gather_paged(cache, table, context_len) for table in x["block_tables"]]) \
            .transpose(1, 2).contiguous()

    k_dense, v_dense = dense(x["k_cache"]), dense(x["v_cache"])

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(
            x["q"][:, :, None], k_dense, v_dense, scale=x["scale"], enable_gqa=True)[:, :, 0]

    out = paged_attention_decode(*args)
    max_err = (out.float() - sdpa().float()).abs().max().item()
    kernel_ms = time_ms(lambda: paged_attention_decode(*args))
    path = "split-k" if split_k_default(batch, NUM_KV_HEADS, max_context_len) else "single"
    row = dict(batch=batch, context=context_len, path=path, kernel_us=1e3 * kernel_ms,
               single_us=1e3 * time_ms(lambda: paged_attention_decode(*args, split_k=False)),
               split_us=1e3 * time_ms(lambda: paged_attention_decode(*args, split_k=True)),
               ref_us=1e3 * time_ms(lambda: paged_attention_decode_ref(*args)),
               sdpa_us=1e3 * time_ms(sdpa), max_err=max_err)
    elem = x["q"].element_size()
    moved = (2 * batch * context_len * NUM_KV_HEADS * HEAD_DIM * elem  # K and V, once
             + 2 * x["q"].numel() * elem + x["block_tables"].numel() * 4)  # q in, out back, block tables
    row["GB/s"] = moved / kernel_ms / 1e6
    row["vs_ref"] = row["ref_us"] / row["kernel_us"]
    row["vs_sdpa"] = row["sdpa_us"] / row["kernel_us"]
    return row


def measure_lora(num_rows: int, device: str, time_ms: Callable[[Callable], float]) -> dict:
    """The batched LoRA update (Triton BGMV on CUDA, the native kernel on a CPU) against the torch
    reference (one grouped matmul pair per slot)."""
    from livecast.kernels.lora import add_lora_bgmv, add_lora_reference
    from livecast.kernels.native.lora_gemm import add_lora_native

    g = torch.Generator().manual_seed(num_rows)
    y, *args = (t.to(device) for t in (
        torch.randn(num_rows, LORA_N, generator=g), torch.randn(num_rows, LORA_K, generator=g),
        torch.randn(LORA_SLOTS, LORA_RANK, LORA_K, generator=g) / LORA_K ** 0.5,
        torch.randn(LORA_SLOTS, LORA_N, LORA_RANK, generator=g) / LORA_RANK ** 0.5,
        (torch.arange(num_rows) + 1) % (LORA_SLOTS + 1) - 1, torch.ones(LORA_SLOTS)))  # every 9th row none
    kernel, path = (add_lora_bgmv, "triton-bgmv") if device == "cuda" else (add_lora_native, "native")
    out, ref = y.clone(), y.clone()
    kernel(out, *args)
    add_lora_reference(ref, *args)
    row = dict(rows=num_rows, path=path, kernel_us=1e3 * time_ms(lambda: kernel(y, *args)),
               ref_us=1e3 * time_ms(lambda: add_lora_reference(y, *args)), max_err=(out - ref).abs().max().item())
    return dict(row, vs_ref=row["ref_us"] / row["kernel_us"])


def report_lora(num_rows: list[int], device: str, time_ms: Callable[[Callable], float]) -> list[dict]:
    rows = [measure_lora(n, device, time_ms) for n in num_rows]
    report("kernels lora", LORA_HEADERS, [[row[h] for h in LORA_HEADERS] for row in rows], {}, None)
    return rows


def round_ms(fn: Callable, min_time_s: float = 0.05) -> float:
    """One round's time of fn on this thread's CPU clock, so that time the scheduler gives other
    work is not counted (the GEMM rows run on one thread)."""
    start = time.thread_time()
    fn()
    reps = max(1, int(min_time_s / max(time.thread_time() - start, 1e-6)))
    start = time.thread_time()
    for _ in range(reps):
        fn()
    return 1e3 * (time.thread_time() - start) / reps


def measure_gemm_variants(bits: int, num_rows: int, rounds: int, time_ms: Callable[[Callable], float] = round_ms
                          ) -> list[dict]:
    """One layer's four GEMMs per variant over `rounds` rounds, each timing every variant once in
    turn: the median time, and the median of the rounds' ratios to AVX2."""
    from livecast.kernels.native import quant_gemm as qg

    g = torch.Generator().manual_seed(bits * 100 + num_rows)
    calls = []
    for n, k in GEMM_SHAPES:
        x = torch.randn(num_rows, k, generator=g)
        if bits == 4:
            codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
            scales = torch.rand(n, k // 32, generator=g) * 0.01
            packed, s8, m8 = qg.pack_q4(codes, scales, -8 * scales)
            calls.append(lambda x=x, w=(packed, s8, m8): qg.q4_gemm(x, *w, 32))
        else:
            codes, s8 = qg.quantize_q8(torch.randn(n, k, generator=g))
            calls.append(lambda x=x, w=(codes, s8): qg.q8_gemm(x, *w))

    def layer():
        for call in calls:
            call()

    variants = qg.runnable_gemm_variants()
    times: dict[str, list[float]] = {name: [] for name in variants}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the variants differ per thread; one thread keeps the scheduler out of it
    try:
        for _ in range(rounds):
            for name in variants:
                with qg.gemm_variant_override(name):
                    times[name].append(time_ms(layer))
    finally:
        torch.set_num_threads(threads)
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    # each round's own ratio: a burst of load that hits one round leaves the others' ratios alone
    return [dict(bits=bits, rows=num_rows, variant=name, layer_us=1e3 * median(t),
                 vs_avx2=median([a / b for a, b in zip(times["avx2"], t)])) for name, t in times.items()]


def report_gemm(num_rows: list[int], rounds: int) -> list[dict]:
    rows = [row for bits in (4, 8) for n in num_rows for row in measure_gemm_variants(bits, n, rounds)]
    report("kernels gemm variants", GEMM_HEADERS, [[row[h] for h in GEMM_HEADERS] for row in rows], {}, None)
    return rows


def measure_prefill(q_len: int, seq_len: int, rounds: int) -> dict:
    """Native prefill attention vs gather + SDPA (SDPA on the chunk's own K/V when nothing is
    cached, as the engine runs it): medians of per-round times and of per-round ratios to SDPA."""
    from livecast.engine.layers.attention import allocate_kv_cache, prefill_attention
    from livecast.kernels.native import paged_prefill

    heads, kv_heads, head_dim, block_size = PREFILL_SHAPE
    g = torch.Generator().manual_seed(seq_len + q_len)
    num_blocks = -(-seq_len // block_size)
    k_cache, v_cache = (allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, torch.float32, "cpu", True)
                        for _ in range(2))
    k_cache.copy_(torch.randn(k_cache.shape, generator=g)), v_cache.copy_(torch.randn(v_cache.shape, generator=g))
    table = torch.randperm(num_blocks, generator=g).int()
    q = torch.randn(q_len, heads, head_dim, generator=g)
    tail = torch.arange(seq_len - q_len, seq_len)
    k_new, v_new = (c[table.long()[tail // block_size], tail % block_size] for c in (k_cache, v_cache))
    paths = {"native": lambda: paged_prefill.prefill_attention(q, k_cache, v_cache, table, seq_len, head_dim ** -0.5),
             "sdpa": lambda: prefill_attention(q, k_cache, v_cache, table, seq_len, head_dim ** -0.5, k_new, v_new)}
    times = {(name, clock): [] for name in paths for clock in ("cpu", "wall")}
    threads = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for clock, num_threads in (("cpu", 1), ("wall", 2)):
                torch.set_num_threads(num_threads)
                for name, fn in paths.items():
                    if clock == "cpu":
                        times[name, clock].append(round_ms(fn))
                    else:
                        start = time.perf_counter()
                        fn()
                        times[name, clock].append(1e3 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    row = dict(queries=q_len, context=seq_len, max_err=(paths["native"]() - paths["sdpa"]()).abs().max().item())
    for clock in ("cpu", "wall"):
        native_ms, sdpa_ms = times["native", clock], times["sdpa", clock]
        row[f"native_{clock}_us"], row[f"sdpa_{clock}_us"] = 1e3 * median(native_ms), 1e3 * median(sdpa_ms)
        row[f"{clock}_vs_sdpa"] = median([b / a for a, b in zip(native_ms, sdpa_ms)])  # > 1: native faster
    return row


def report_prefill(sizes: list[int], rounds: int) -> list[dict]:
    shapes = [shape for n in sizes for shape in ((n, n), (n // 4, n))]  # a fresh prompt, a chunk after a prefix
    rows = [measure_prefill(q_len, seq_len, rounds) for q_len, seq_len in shapes]
    report("kernels prefill attention", PREFILL_HEADERS, [[row[h] for h in PREFILL_HEADERS] for row in rows], {}, None)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench kernels", description=__doc__)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--context-lens", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--lora-rows", type=int, nargs="*", default=[1, 16, 256], help="rows per LoRA call")
    parser.add_argument("--gemm-rows", type=int, nargs="*", default=[1, 4, 16],
                        help="activation rows per native int4/int8 GEMM call (decode sizes)")
    parser.add_argument("--gemm-rounds", type=int, default=5, help="alternating rounds per GEMM row")
    parser.add_argument("--prefill-tokens", type=int, nargs="*", default=[512, 2048],
                        help="prompt lengths for the native prefill attention rows")
    parser.add_argument("--prefill-rounds", type=int, default=5, help="alternating rounds per prefill row")
    args = parser.parse_args(argv)
    from livecast.kernels import native

    gemm = report_gemm(args.gemm_rows, args.gemm_rounds) if native.available() else []
    prefill = report_prefill(args.prefill_tokens, args.prefill_rounds) if native.available() else []

    if not torch.cuda.is_available():
        from torch.utils.benchmark import Timer

        def cpu_ms(fn: Callable) -> float:
            return 1e3 * Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) \
                .blocked_autorange(min_run_time=0.2).median

        lora = report_lora(args.lora_rows, "cpu", cpu_ms) if native.available() else []
        print("no GPU present: the attention benchmark needs CUDA; only the GEMM and LoRA rows were measured")
        report("kernels", HEADERS, [], {"gpu": False, "lora": lora, "gemm": gemm, "prefill": prefill},
               args.json_path)
        return 0

    import triton.testing

    def time_ms(fn: Callable) -> float:
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")  # flushes L2 between runs

    copy_gbps = copy_bandwidth_gbps()
    rows = []
    for batch in args.batch_sizes:
        for context_len in args.context_lens:
            row = measure(batch, context_len, "cuda", time_ms)
            row["pct_copy_bw"] = 100.0 * row["GB/s"] / copy_gbps
            rows.append(row)
            torch.cuda.empty_cache()
    print(f"device {torch.cuda.get_device_name(0)}: device-to-device copy {copy_gbps:.0f} GB/s")
    result = {"gpu": True, "copy_bandwidth_gbps": copy_gbps,
              "shape": dict(num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                            block_size=BLOCK_SIZE, dtype=str(DTYPE)),
              "rows": rows, "lora": report_lora(args.lora_rows, "cuda", time_ms), "gemm": gemm,
              "prefill": prefill}
    report("kernels", HEADERS, [[row[h] for h in HEADERS] for row in rows], result, args.json_path)
    return 0
