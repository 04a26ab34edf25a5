"""`livecast bench lora` (LLM section, the default): what serving many LoRA adapters costs the engine.

The default model is the shipped SmolLM2 GGUF (Q4_1 base, adapters in float: QLoRA-style), the
real deployment; `--model` takes any other. `--adapters` random PEFT adapters of rank `--rank`
on all seven projections are made with peft on the base's HF folder. For each batch size the
conditions run in alternating rounds (the order rotated each round, so background load hits
every condition alike), each submitting the batch at once (one short prompt, `--max-tokens`
greedy tokens with ignore_eos) and stepping until done; tok/s = generated tokens / wall time:
- `base`: no adapter in the batch; `base, per-layer path`: the same with the fused native decode
  stack switched off, which is what every step with an adapter row takes;
- `mixed, <kernel>`: rows round-robin over the adapters, for the engine's LoRA kernel and torch's;
- `1 adapter`: every row on the same adapter.
The naive way, after the rounds: each adapter merged into the base weights (peft
merge_and_unload, a dense model, not Q4) and served by its own engine, one engine at a time,
each running its share of the batch. Also: adapters' host bytes against the base weights
(all targets and q,v only), the resident slots' bytes, and step times while an adapter loads
from another thread. Targets: mixed >= 80% of the base's tok/s at 16 and 64 rows; an adapter
< 5% of the base weights; loading never stalls running streams.
"""
from __future__ import annotations

import copy
import itertools
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

PROMPT = "Write a short note about the harbour at dawn."
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QV_TARGETS = ("q_proj", "v_proj")
STRENGTH = 0.02  # std of the random A and B (peft starts B at zero, which would skip nothing real)
TARGET_RATIO, TARGET_MEMORY = 0.80, 0.05
STALL_STEPS_BEFORE = 8
_ids = itertools.count()


def make_adapters(base_path: Path, folder: Path, prefix: str, count: int, rank: int,
                  targets: tuple[str, ...], seed: int) -> list[Path]:
    """`count` PEFT adapter folders with random A and B, one base model loaded for all of them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank,
                                                  target_modules=list(targets)))
    generator, paths = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for i in range(count):
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * STRENGTH)
            paths.append(folder / f"{prefix}{i}")
            peft_model.save_pretrained(paths[-1])
    return paths


def run_batch(engine, loras: list[str | None], max_tokens: int, step_ms: list[float] | None = None):
    """Submit one request per entry of `loras` (its adapter, None: the base) and step until all
    are done. Returns (generated tokens, seconds)."""
    from livecast.engine import SamplingParams

    prompt = engine.tokenize(PROMPT)
    for lora in loras:
        engine.add_request(f"lora-bench-{next(_ids)}", prompt, SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, lora=lora))
    generated, start = 0, time.perf_counter()
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        for out in engine.step():
            if out.finished:
                generated += len(out.outputs[0].token_ids)
        if step_ms is not None:
            step_ms.append((time.perf_counter() - t) * 1000)
    return generated, time.perf_counter() - start


def conditions(engine, names: list[str]) -> dict[str, tuple[Any, str, bool]]:
    """label -> (rows' adapters for a batch of n, LoRA kernel, fused native decode stack on)."""
    default = engine.lora.slots.kernel
    table = {"base": (lambda n: [None] * n, default, True)}
    if engine.model.native_decode is not None:
        table["base, per-layer path"] = (lambda n: [None] * n, default, False)
    for kernel in dict.fromkeys((default, "torch")):
        table[f"{len(names)} adapters mixed, {kernel}"] = (
            lambda n: [names[i % len(names)] for i in range(n)], kernel, True)
    table[f"1 adapter, {default}"] = (lambda n: [names[0]] * n, default, True)
    return table


def throughput(engine, names: list[str], args) -> dict[int, dict[str, list[float]]]:
    """tok/s samples per batch size and condition, alternating rounds (the first a warm-up)."""
    fused = engine.model.native_decode
    table = conditions(engine, names)
    samples = {b: {label: [] for label in table} for b in args.batches}
    try:
        for r in range(args.rounds + 1):
            labels = list(table)
            labels = labels[r % len(labels):] + labels[:r % len(labels)]
            for batch in args.batches:
                for label in labels:
                    loras, kernel, use_fused = table[label]
                    engine.lora.slots.kernel = kernel
                    engine.model.native_decode = fused if use_fused else None
                    tokens, seconds = run_batch(engine, loras(batch), 4 if r == 0 else args.max_tokens)
                    if r:
                        samples[batch][label].append(tokens / seconds)
    finally:
        engine.lora.slots.kernel = table["base"][1]
        engine.model.native_decode = fused
    return samples


def merged_engines(engine, base_path: Path, adapter_paths: list[Path], args, folder: Path) -> dict[str, Any]:
    """The naive way: each adapter merged into its own dense engine, run one after another, each
    on its share of the batch. Measures `--merged-engines` of them; the rest take the same time
    (same model, same share), so the total time is scaled by adapters / measured."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from livecast.engine import EngineConfig, LLMEngine

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    measured = adapter_paths[:args.merged_engines]
    seconds = {b: 0.0 for b in args.batches}
    tokens = {b: 0 for b in args.batches}
    dense_bytes, dtype = 0, None
    for path in measured:
        out = folder / "merged"
        PeftModel.from_pretrained(copy.deepcopy(base), path).merge_and_unload().save_pretrained(out)
        for extra in base_path.iterdir():  # tokenizer and generation config beside the weights
            if extra.is_file() and not (out / extra.name).exists():
                shutil.copy(extra, out / extra.name)
        dense = LLMEngine(EngineConfig(model=str(out), max_num_seqs=max(args.batches), num_threads=args.threads,
                                       kv_cache_memory=engine.config.kv_cache_memory,
                                       **({"dtype": args.merged_dtype} if args.merged_dtype else {})))
        dense_bytes, dtype = model_bytes(dense.model), str(dense.dtype).removeprefix("torch.")
        run_batch(dense, [None] * 2, 4)  # warm-up
        for batch in args.batches:
            share = max(batch // len(adapter_paths), 1)
            runs = [run_batch(dense, [None] * share, args.max_tokens) for _ in range(args.rounds)]
            best_tokens, best_seconds = min(runs, key=lambda tr: tr[1])
            tokens[batch] += best_tokens
            seconds[batch] += best_seconds
        del dense
        shutil.rmtree(out)
    scale = len(adapter_paths) / len(measured)
    return {"engines": len(adapter_paths), "engines_measured": len(measured), "dtype": dtype,
            "weights": f"dense {dtype} (merged; not the base's quantization)",
            "dense_model_bytes": dense_bytes, "all_engines_bytes": dense_bytes * len(adapter_paths),
            "statistic": "sum over engines of each one's best run of its share; total time x "
                         f"{scale:g} when fewer engines than adapters were measured",
            "per_batch": {b: {"tokens": round(tokens[b] * scale), "seconds": seconds[b] * scale,
                              "tok_s": tokens[b] / seconds[b], "share_per_engine": max(b // len(adapter_paths), 1)}
                          for b in args.batches}}


def load_during_decode(engine, names: list[str], path: Path, args) -> dict[str, Any]:
    """Step times of a running batch (rows on half the adapters) while another thread loads an
    adapter, then the step that first runs a request on it (its slot written in that step)."""
    from livecast.engine import SamplingParams

    batch, half = args.batches[0], names[:max(len(names) // 2, 1)]
    prompt = engine.tokenize(PROMPT)
    for i in range(batch):
        engine.add_request(f"lora-stall-{next(_ids)}", prompt, SamplingParams(
            temperature=0.0, max_tokens=4 * args.max_tokens, ignore_eos=True, lora=half[i % len(half)]))

    def timed_step() -> float:
        t = time.perf_counter()
        engine.step()
        return (time.perf_counter() - t) * 1000

    timed_step()  # the prefill
    before = [timed_step() for _ in range(STALL_STEPS_BEFORE)]
    loaded: list[Any] = []
    thread = threading.Thread(target=lambda: loaded.append(engine.add_lora("late-load", str(path))))
    start = time.perf_counter()
    thread.start()
    during = []
    while thread.is_alive() and engine.has_unfinished_requests():
        during.append(timed_step())
    thread.join()
    load_s = time.perf_counter() - start
    engine.add_request(f"lora-stall-{next(_ids)}", prompt, SamplingParams(
        temperature=0.0, max_tokens=4, ignore_eos=True, lora="late-load"))
    first_use_ms = timed_step()
    after = []
    while engine.has_unfinished_requests():
        after.append(timed_step())
    engine.remove_lora("late-load")
    return {"batch": batch, "adapters_running": len(half), "load_seconds": load_s, "steps_during_load": len(during),
            "step_ms_before_max": max(before), "step_ms_before_median": statistics.median(before),
            "step_ms_during_max": max(during, default=0.0),
            "step_ms_during_median": statistics.median(during) if during else 0.0,
            "first_step_on_new_adapter_ms": first_use_ms,
            "step_ms_after_median": statistics.median(after) if after else 0.0}


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.nbytes for t in itertools.chain(model.parameters(), model.buffers()))


def llm(args) -> tuple[list[list[Any]], dict[str, Any]]:
    from livecast.engine import EngineConfig, LLMEngine
    from livecast.engine.model_loader import resolve_model

    base_path = resolve_model(args.model)
    engine = LLMEngine(EngineConfig(model=args.model, enable_lora=True, max_loras=args.adapters,
                                    max_lora_rank=args.rank, max_num_seqs=max(args.batches),
                                    kv_cache_memory=int(args.kv_cache_gb * (1 << 30)) if args.kv_cache_gb else None,
                                    num_threads=args.threads))
    names = [f"adapter{i}" for i in range(args.adapters)]
    with tempfile.TemporaryDirectory(prefix="livecast-lora-bench-") as tmp:
        folder = Path(tmp)
        paths = make_adapters(base_path, folder, "all", args.adapters + 1, args.rank, ALL_TARGETS, seed=0)
        qv_path = make_adapters(base_path, folder, "qv", 1, args.rank, QV_TARGETS, seed=1)[0]
        adapters = [engine.add_lora(name, str(p)) for name, p in zip(names, paths)]
        qv = engine.add_lora("qv-only", str(qv_path))
        engine.remove_lora("qv-only")
        samples = throughput(engine, names, args)
        stall = load_during_decode(engine, names, paths[-1], args)
        naive = merged_engines(engine, base_path, paths[:args.adapters], args, folder) if args.merged_engines else None

    base_bytes = model_bytes(engine.model)
    memory = {"base_weights_bytes": base_bytes, "base_weights_note": "the engine model's parameters and buffers "
              f"({engine.quantization_detail})",
              "adapter_bytes_all_targets": adapters[0].nbytes, "adapter_bytes_qv": qv.nbytes,
              "adapter_vs_base_all_targets": adapters[0].nbytes / base_bytes, "adapter_vs_base_qv": qv.nbytes / base_bytes,
              "adapter_dtype": str(next(iter(adapters[0].modules.values()))[0].dtype).removeprefix("torch."),
              "slots_bytes": engine.lora.slots.nbytes, "slots_vs_base": engine.lora.slots.nbytes / base_bytes,
              "max_loras": args.adapters, "target_per_adapter": TARGET_MEMORY}
    rows, results = [], {}
    for batch, by_label in samples.items():
        base_best, base_median = max(by_label["base"]), statistics.median(by_label["base"])
        results[batch] = {}
        for label, tok_s in by_label.items():
            best, median = max(tok_s), statistics.median(tok_s)
            results[batch][label] = {"tok_s_best": best, "tok_s_median": median, "ratio_best": best / base_best,
                                     "ratio_median": median / base_median}
            rows.append([label, batch, best, median, best / base_best, median / base_median])
        if naive is not None:
            tok_s = naive["per_batch"][batch]["tok_s"]
            scaled = "" if naive["engines_measured"] == naive["engines"] else (
                f"; {naive['engines_measured']} measured, time scaled")
            label = f"naive: {naive['engines']} merged engines ({naive['dtype']}{scaled})"
            results[batch][label] = {"tok_s_best": tok_s, "ratio_best": tok_s / base_best}
            rows.append([label, batch, tok_s, "", tok_s / base_best, ""])
    info = {"model": engine.model_name, "quantization": engine.quantization_detail, "dtype": str(engine.dtype),
            "device": str(engine.device), "lora_kernel": engine.lora.slots.kernel, "adapters": args.adapters,
            "rank": args.rank, "targets": list(ALL_TARGETS), "max_tokens": args.max_tokens, "rounds": args.rounds,
            "batches": args.batches, "prompt_tokens": len(engine.tokenize(PROMPT)), "target_ratio": TARGET_RATIO,
            "statistic": "generated tok/s (wall time, prefill included), best round (median alongside); "
                         "ratio vs base in the same rounds",
            "results": {str(b): r for b, r in results.items()}, "memory": memory, "load_stall": stall,
            "naive_merged": naive}
    return rows, info


def summary(info: dict[str, Any]) -> list[str]:
    mem, stall = info["memory"], info["load_stall"]
    lines = [f"memory: one rank-{info['rank']} adapter, all 7 targets: {mem['adapter_bytes_all_targets'] / 2**20:.2f} MiB = "
             f"{mem['adapter_vs_base_all_targets']:.1%} of the base weights ({mem['base_weights_bytes'] / 2**20:.1f} MiB); "
             f"q,v only: {mem['adapter_bytes_qv'] / 2**20:.2f} MiB = {mem['adapter_vs_base_qv']:.1%} "
             f"(target < {TARGET_MEMORY:.0%}; host copies in {mem['adapter_dtype']}); {mem['max_loras']} resident slots: "
             f"{mem['slots_bytes'] / 2**20:.1f} MiB = {mem['slots_vs_base']:.0%} of the base weights",
             f"load while {stall['batch']} rows decode: {stall['load_seconds'] * 1000:.0f} ms on another thread, "
             f"{stall['steps_during_load']} steps meanwhile, max step {stall['step_ms_during_max']:.1f} ms "
             f"(before: max {stall['step_ms_before_max']:.1f}, median {stall['step_ms_before_median']:.1f}); "
             f"the step that first runs it (slot written): {stall['first_step_on_new_adapter_ms']:.1f} ms"]
    for batch, by_label in info["results"].items():
        mixed = next(v for k, v in by_label.items() if "mixed" in k)
        lines.append(f"batch {batch}: {info['adapters']} adapters mixed keep {mixed['ratio_best']:.0%} of the base's "
                     f"tok/s (median {mixed['ratio_median']:.0%}; target {TARGET_RATIO:.0%})")
    return lines
