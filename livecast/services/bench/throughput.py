"""`livecast bench throughput`: the engine vs HF transformers on one seeded offline workload.

All three runs use the same model and dtype. The engine gets every request at once; HF runs a
seeded subset one request at a time, then static batches (left padding, each batch runs to its
longest output). Throughput counts only the requested output tokens.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from livecast.services.bench.report import report


def make_workload(num_requests: int, seed: int, vocab_size: int, min_prompt=32, max_prompt=512,
                  min_output=16, max_output=256) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    low = 1000  # stay clear of special tokens at the start of the vocabulary
    return [([rng.randrange(low, vocab_size) for _ in range(rng.randint(min_prompt, max_prompt))],
             rng.randint(min_output, max_output)) for _ in range(num_requests)]


def run_engine(engine, workload, temperature: float = 0.0, seed: int = 0) -> dict:
    from livecast.engine import SamplingParams

    for i, (prompt, out_len) in enumerate(workload):
        engine.add_request(f"bench-{i}", prompt, SamplingParams(temperature=temperature, seed=seed + i if temperature
                                                                else None, max_tokens=out_len, ignore_eos=True))
    bm = engine.block_manager
    peak_alloc = peak_filled = generated = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                generated += len(out.outputs[0].token_ids)
        seqs = [s for g in engine.scheduler.running for s in g.seqs if not s.finished]
        allocated, filled = bm.slot_usage(seqs)
        if allocated > peak_alloc:
            peak_alloc, peak_filled = allocated, filled
    elapsed = time.perf_counter() - start
    return {"tok_s": generated / elapsed, "seconds": elapsed, "tokens": generated,
            "kv_waste_pct": 100.0 * (peak_alloc - peak_filled) / max(peak_alloc, 1),
            "preemptions": engine.scheduler.num_preemptions}


def peak_blocks(engine, requests) -> int:
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(f"kv-{time.monotonic_ns()}-{i}", prompt, params)
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, engine.block_manager.device.num_used)
    return peak


def parallel_sampling_saving(engine, vocab_size: int, seed: int) -> dict:
    from livecast.engine import SamplingParams

    rng = random.Random(seed + 1)
    prompts = [[rng.randrange(1000, vocab_size) for _ in range(512)] for _ in range(5)]
    one = peak_blocks(engine, [(prompts[0], SamplingParams(n=4, temperature=1.0, seed=seed, max_tokens=128,
                                                           ignore_eos=True))])
    four = peak_blocks(engine, [(p, SamplingParams(temperature=1.0, seed=seed, max_tokens=128, ignore_eos=True))
                                for p in prompts[1:]])
    return {"n4_blocks": one, "separate_blocks": four, "saving_pct": 100.0 * (1 - one / four)}


def _hf_sampling(temperature: float) -> dict:
    """generate() options for the same distribution as the engine's: plain temperature sampling
    (HF's generation config would otherwise add top_k=50)."""
    if not temperature:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def run_hf_sequential(model, workload, temperature: float = 0.0) -> dict:
    generated, start = 0, time.perf_counter()
    with torch.inference_mode():
        for prompt, out_len in workload:
            x = torch.tensor([prompt])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=out_len,
                               min_new_tokens=out_len, pad_token_id=0, **_hf_sampling(temperature))
            generated += y.shape[1] - len(prompt)
    elapsed = time.perf_counter() - start
    return {"tok_s": generated / elapsed, "seconds": elapsed, "tokens": generated}


def run_hf_static(model, workload, batch_size: int, temperature: float = 0.0) -> dict:
    useful, start = 0, time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(workload), batch_size):
            batch = workload[b:b + batch_size]
            width = max(len(p) for p, _ in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (p, _) in enumerate(batch):
                ids[i, width - len(p):] = torch.tensor(p)
                mask[i, width - len(p):] = 1
            longest = max(n for _, n in batch)
            model.generate(ids, attention_mask=mask, max_new_tokens=longest,
                           min_new_tokens=longest, pad_token_id=0, **_hf_sampling(temperature))
            useful += sum(n for _, n in batch)
    elapsed = time.perf_counter() - start
    return {"tok_s": useful / elapsed, "seconds": elapsed, "tokens": useful}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench throughput", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-requests", type=int, default=128)
    parser.add_argument("--hf-sequential-requests", type=int, default=8)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--hf-static-requests", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--kv-cache-gb", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy; > 0: seeded temperature sampling on both sides")
    parser.add_argument("--skip-hf", action="store_true", help="engine figures only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from livecast.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                                    max_num_batched_tokens=args.max_num_batched_tokens, kv_cache_memory=int(args.kv_cache_gb * (1 << 30))))
    vocab = engine.hf_config.vocab_size
    workload = make_workload(args.num_requests, args.seed, vocab)
    run_engine(engine, make_workload(4, args.seed + 7, vocab, 16, 32, 4, 8))  # warm-up
    ours = run_engine(engine, workload, args.temperature, args.seed)
    saving = parallel_sampling_saving(engine, vocab, args.seed)
    result = {"engine_output_tok_s": ours["tok_s"], "engine_seconds": ours["seconds"],
              "engine_output_tokens": ours["tokens"], "kv_waste_pct": ours["kv_waste_pct"],
              "engine_preemptions": ours["preemptions"],
              "parallel_sampling_kv_saving_pct": saving["saving_pct"], "parallel_sampling": saving,
              "num_requests": args.num_requests, "dtype": args.dtype, "model": engine.model_name,
              "temperature": args.temperature}
    rows = [["livecast engine (all at once)", args.num_requests, ours["tokens"], ours["seconds"], ours["tok_s"], 1.0]]
    if not args.skip_hf:
        hf = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=engine.dtype).eval()
        rng = random.Random(args.seed)
        torch.manual_seed(args.seed)
        seq = run_hf_sequential(hf, rng.sample(workload, args.hf_sequential_requests), args.temperature)
        static = run_hf_static(hf, workload[:args.hf_static_requests], args.hf_batch_size, args.temperature)
        result.update(hf_sequential_output_tok_s=seq["tok_s"], hf_static_batch_output_tok_s=static["tok_s"],
                      engine_vs_hf_sequential=ours["tok_s"] / seq["tok_s"],
                      engine_vs_hf_static_batch=ours["tok_s"] / static["tok_s"])
        rows += [["HF generate, batch 1 (sequential)", args.hf_sequential_requests, seq["tokens"], seq["seconds"],
                  seq["tok_s"], seq["tok_s"] / ours["tok_s"]],
                 [f"HF generate, static batch {args.hf_batch_size}", args.hf_static_requests, static["tokens"],
                  static["seconds"], static["tok_s"], static["tok_s"] / ours["tok_s"]]]
    report("throughput", ["system", "requests", "output tokens", "seconds", "output tok/s", "vs engine"], rows,
           result, args.json)
    print(f"KV waste at peak: {ours['kv_waste_pct']:.2f}%  ·  n=4 KV saving: {saving['saving_pct']:.1f}% "
          f"({saving['n4_blocks']} vs {saving['separate_blocks']} blocks)")
    return 0
