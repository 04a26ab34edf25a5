"""`livecast bench lora`: what LoRA adapters cost, LLM (the default, or `--llm`) and video (`--video`).

LLM section: see services.bench.lora_llm.

Video section: the demo model (random weights) with N random LoRAs on its attention projections
(rank `--rank`, written in diffusers' format and loaded like `--diffusion-loras`). N streams
with N different LoRAs against the same N streams with none, each condition one StreamBatcher
on the same pipeline, measured in alternating rounds so background load hits every condition
alike. The per-row strategies are each timed on the mixed batch: `batched` (the A of all
adapters concatenated, a per-row mask, two matmuls per layer), `gather` (each row's own A and B
gathered, two batched matmuls) and `grouped` (one pair of matmuls per adapter over its rows);
the UNet call alone is timed too. Target: a stream with a LoRA keeps >= 85% of its fps without one.
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch

from livecast.services.bench.diffusion import best_and_median, time_rounds, video_frames
from livecast.services.bench.report import report
from livecast.streamdiff.lora import DEFAULT_STRATEGY, STRATEGIES

PROMPT = "an ink drawing of a harbour"
TARGET = 0.85


def video(args, device: torch.device, dtype: torch.dtype) -> tuple[list[list[Any]], dict[str, Any]]:
    from livecast.streamdiff import StreamBatcher, StreamPipeline
    from livecast.streamdiff.lora_format import save_random_adapter

    options = {"resolution": args.resolution} if args.resolution else {}
    pipe = StreamPipeline.from_pretrained("demo", device=device, dtype=dtype,
                                          max_loras=max(args.streams, 1), **options)
    side = pipe.states.default_size[0]
    names = [f"style{i}" for i in range(args.streams)]
    with tempfile.TemporaryDirectory(prefix="livecast-lora-bench-") as folder:
        for i, name in enumerate(names):
            pipe.load_lora(name, save_random_adapter(pipe.unet, f"{folder}/{name}", seed=i, rank=args.rank))
    adapter = pipe.loras.resident[names[0]]
    conditions = {"none": [None] * args.streams, "mixed": names}
    batchers = {}
    for label, loras in conditions.items():
        batcher = StreamBatcher(pipe, max_batch_size=args.streams, max_streams=args.streams)
        for i, lora in enumerate(loras):
            batcher.add_stream(i, prompt=f"{PROMPT} #{i}", seed=i, strength=0.5, num_inference_steps=2,
                               lora=lora)
        batchers[label] = batcher

    def one_step(batcher, strategy: str | None = None):
        def run(image) -> None:
            if strategy:
                pipe.loras.strategy = strategy
            futures = [batcher.submit(i, image) for i in range(args.streams)]
            while batcher.num_pending():
                batcher.step()
            for future in futures:
                future.result()
        return run

    contenders = {"no LoRA": one_step(batchers["none"])}
    for strategy in STRATEGIES:
        contenders[f"{args.streams} LoRAs, {strategy}"] = one_step(batchers["mixed"], strategy)
    unet_ms = unet_calls(pipe, names, args, device)
    frames = video_frames(args.frames + 2, side)
    time_rounds(contenders, frames[:2], rounds=1, device=device)  # warm-up: states, packed weights
    fps = time_rounds(contenders, frames[2:], rounds=args.rounds, device=device)
    pipe.loras.strategy = DEFAULT_STRATEGY
    # frames/s of one stream (every stream gets one frame per batched step)
    per_stream = {name: best_and_median(samples) for name, samples in fps.items()}
    base_best, base_median = per_stream[next(iter(per_stream))]
    rows, result = [], {}
    for (name, (best, median)), ms in zip(per_stream.items(), unet_ms.values()):
        rows.append([name, args.streams, f"{pipe.name} {side}x{side}", best, median, args.streams * best,
                     best / base_best, median / base_median, ms])
        result[name] = {"fps_per_stream_best": best, "fps_per_stream_median": median,
                        "fps_total_best": args.streams * best, "ratio_best": best / base_best,
                        "ratio_median": median / base_median, "unet_call_ms_median": ms}
    info = {"streams": args.streams, "rank": args.rank, "lora_layers": len(adapter.layers),
            "lora_params": sum(l.down.numel() + l.up.numel() for l in adapter.layers.values()),
            "resolution": side, "frames": args.frames, "rounds": args.rounds, "target_ratio": TARGET,
            "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "statistic": "per-stream frames/s, best round (median alongside); ratio vs no LoRA",
            "results": result}
    return rows, info


def unet_calls(pipe, names: list[str], args, device: torch.device) -> dict[str, float]:
    """Median ms of the UNet call alone (one row per stream), per condition, alternating."""
    import time

    from livecast.services.bench.diffusion import _sync

    side = pipe.states.default_size[0] // pipe.codec.downscale
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.streams, pipe.codec.latent_channels, side, side, generator=generator)
    x = x.to(device=device, dtype=pipe.dtype)
    t = torch.full((args.streams,), 499, device=device)
    embeds = pipe.prompts(PROMPT).expand(args.streams, -1, -1)
    conditions = {"none": (None, [(None, args.streams)])}
    for strategy in STRATEGIES:
        conditions[strategy] = (strategy, [((n, 1.0), 1) for n in names])
    samples: dict[str, list[float]] = {k: [] for k in conditions}
    with torch.inference_mode():
        for r in range(args.unet_calls + 1):
            for label, (strategy, rows) in conditions.items():
                if strategy:
                    pipe.loras.strategy = strategy
                _sync(device)
                start = time.perf_counter()
                with pipe.loras.rows(rows):
                    pipe.unet(x, t, encoder_hidden_states=embeds, return_dict=False)
                _sync(device)
                if r:  # the first round warms up
                    samples[label].append((time.perf_counter() - start) * 1000)
    pipe.loras.strategy = DEFAULT_STRATEGY
    return {label: float(sorted(v)[len(v) // 2]) for label, v in samples.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", action="store_true", help="the LLM section (the default without --video)")
    parser.add_argument("--video", action="store_true", help="the video section")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--rank", type=int, default=None, help="rank of the random LoRAs (default: 16 LLM, 8 video)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default: 3 LLM, 5 video)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    llm_args = parser.add_argument_group("LLM")
    llm_args.add_argument("--model", default=None, help="default: the shipped SmolLM2 GGUF (Q4_1)")
    llm_args.add_argument("--batches", default="16,64", help="batch sizes (requests submitted at once)")
    llm_args.add_argument("--adapters", type=int, default=8, help="distinct adapters mixed in a batch (max_loras)")
    llm_args.add_argument("--max-tokens", type=int, default=64, help="greedy tokens per request (ignore_eos)")
    llm_args.add_argument("--merged-engines", type=int, default=None,
                          help="merged engines measured for the naive way (default: one per adapter; fewer are "
                               "scaled to all; 0 skips)")
    llm_args.add_argument("--merged-dtype", default=None,
                          help="dtype of the merged dense engines (default: the engine's auto for dense weights)")
    llm_args.add_argument("--kv-cache-gb", type=float, default=None, help="default: the engine's")
    video_args = parser.add_argument_group("video")
    video_args.add_argument("--streams", type=int, default=4, help="streams (and distinct LoRAs)")
    video_args.add_argument("--frames", type=int, default=30, help="frames per stream per condition")
    video_args.add_argument("--unet-calls", type=int, default=20, help="alternating UNet-only calls per condition")
    video_args.add_argument("--resolution", type=int, default=None, help="default: the demo's 256")
    video_args.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    video_args.add_argument("--dtype", default=None,
                            help="default: bf16 on CPUs with bf16 arithmetic, fp16 on CUDA")
    args = parser.parse_args(argv)
    sections = [name for name, on in (("llm", args.llm or not args.video), ("video", args.video)) if on]
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if (args.streams < 1 or (args.rank is not None and args.rank < 1) or args.adapters < 1
            or min(args.batches) < 1 or args.max_tokens < 1 or (args.rounds is not None and args.rounds < 1)):
        parser.error("--streams, --rank, --adapters, --batches, --max-tokens and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merged_engines is None:
        args.merged_engines = args.adapters
    args.merged_engines = min(args.merged_engines, args.adapters)

    tables, infos, lines = [], {}, []
    if "llm" in sections:
        from livecast.services.bench import lora_llm

        llm_opts = argparse.Namespace(**{**vars(args), "rank": args.rank or 16, "rounds": args.rounds or 3})
        rows, infos["llm"] = lora_llm.llm(llm_opts)
        tables.append(("lora (llm)", ["condition", "batch", "tok/s (best)", "tok/s (median)", "vs base (best)",
                                      "vs base (median)"], rows))
        lines += lora_llm.summary(infos["llm"])
    if "video" in sections:
        from livecast.streamdiff.components import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        video_opts = argparse.Namespace(**{**vars(args), "rank": args.rank or 8, "rounds": args.rounds or 5})
        rows, infos["video"] = video(video_opts, device, resolve_dtype(args.dtype, device))
        tables.append(("lora (video)", ["streams' LoRAs", "streams", "model", "fps/stream (best)",
                                        "fps/stream (median)", "fps total (best)", "vs no LoRA (best)",
                                        "vs no LoRA (median)", "UNet call ms (median)"], rows))
        chosen = next(r for name, r in infos["video"]["results"].items() if name.endswith(DEFAULT_STRATEGY))
        lines.append(f"a stream with a LoRA ({DEFAULT_STRATEGY}, the default) keeps {chosen['ratio_best']:.0%} of "
                     f"its fps without one (median {chosen['ratio_median']:.0%}; target {TARGET:.0%})")
    for i, (name, headers, rows) in enumerate(tables):
        last = i == len(tables) - 1
        report(name, headers, rows, infos if last else {}, args.json if last else None)
    for line in lines:
        print(line)
    return 0
