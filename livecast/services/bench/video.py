"""`livecast bench video --flicker`: how much a stream's output flickers, with and without
`temporal_blend` (the EMA over its denoised latents), and what the blend costs in frames/s.

Flicker is the mean absolute difference between consecutive frames, in 0-255 pixel units, over
all pixels and channels. The output's flicker is reported next to the input's own (both at the
output's size) and as their ratio: a ratio above 1 means the pipeline adds flicker of its own.

Inputs (both synthetic, so the run needs nothing on disk):
- `still`: one fixed picture plus fresh Gaussian sensor noise every frame (sigma 4/255 by
  default), a camera pointed at a still scene;
- `pan`: a window sliding slowly (1 px a frame by default) across a larger picture.

With random weights (`demo-random`, `sd-turbo-shape`, or `demo` while its trained weights are
not installed) the outputs are not pictures, but how they change from frame to frame still
measures what the blend does; the table says which weights ran.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch

from livecast.services.bench.report import report

PROMPT = "an oil painting of a quiet harbour"


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with some structure: coloured blobs over a gradient (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([x, y, 1 - x], -1) * 160 + 40
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width / max(width, height)), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image.clip(0, 255).astype(np.uint8)


def still_frames(num: int, size: int, noise: float, seed: int = 0) -> list[np.ndarray]:
    base = scene(size, size, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    return [(base + rng.normal(0, noise, base.shape)).clip(0, 255).astype(np.uint8) for _ in range(num)]


def pan_frames(num: int, size: int, step: int, seed: int = 0) -> list[np.ndarray]:
    big = scene(size + step * num, size, seed)
    return [big[:, i * step:i * step + size].copy() for i in range(num)]


def flicker(frames: Sequence[np.ndarray | PIL.Image.Image]) -> float:
    """Mean absolute frame-to-frame difference (0-255 units), over all consecutive pairs."""
    arrays = [np.asarray(f, dtype=np.float32) for f in frames]
    if len(arrays) < 2:
        raise ValueError("flicker needs at least two frames")
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(arrays, arrays[1:])]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(pipe, frames: list[np.ndarray], blends: Sequence[float], warmup: int,
            settings: dict[str, Any]) -> list[dict[str, float]]:
    """One fresh stream per `temporal_blend` value over the same `frames`: flicker and frames/s
    of each, after `warmup` frames (which fill the Stream Batch buffer and start the blend).

    The streams take turns frame by frame, so background load on a shared machine hits all of
    them alike.
    """
    from livecast.streamdiff.config import StreamParams

    states = [pipe.new_state(StreamParams(prompt=PROMPT, temporal_blend=b, **settings)) for b in blends]
    outputs: list[list[PIL.Image.Image]] = [[] for _ in blends]
    seconds = [0.0] * len(blends)
    for i, f in enumerate(frames):
        for k, state in enumerate(states):
            _sync(pipe.device)
            start = time.perf_counter()
            outputs[k].append(pipe.run([(state, f)])[0])
            _sync(pipe.device)
            if i >= warmup:
                seconds[k] += time.perf_counter() - start
    size = outputs[0][0].size
    inputs = [PIL.Image.fromarray(f).resize(size, PIL.Image.BILINEAR) for f in frames[warmup:]]
    in_flicker = flicker(inputs)
    results = []
    for b, outs, secs in zip(blends, outputs, seconds):
        out_flicker = flicker(outs[warmup:])
        results.append({"temporal_blend": float(b), "output_flicker": out_flicker, "input_flicker": in_flicker,
                        "relative_flicker": out_flicker / in_flicker if in_flicker else float("inf"),
                        "fps": (len(frames) - warmup) / secs})
    return results


def run_flicker(pipe, inputs: dict[str, list[np.ndarray]], blends: Sequence[float], warmup: int,
                settings: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    return {name: measure(pipe, frames, blends, warmup, settings) for name, frames in inputs.items()}


def main(argv: list[str], make_pipe: Callable[..., Any] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flicker", action="store_true", help="measure flicker with and without temporal_blend")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--model", default="demo", help="demo, demo-random, sd-turbo-shape or a diffusers folder")
    parser.add_argument("--blends", type=float, nargs="+", default=[0.0, 0.5, 0.8],
                        help="temporal_blend values to compare (0: off)")
    parser.add_argument("--frames", type=int, default=40, help="measured frames per input and blend")
    parser.add_argument("--warmup", type=int, default=4, help="frames run before measuring")
    parser.add_argument("--size", type=int, default=None, help="square frame side (default: the model's)")
    parser.add_argument("--noise", type=float, default=4.0, help="sensor noise sigma of the still input (0-255)")
    parser.add_argument("--pan-step", type=int, default=1, help="pixels the pan input moves per frame")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on CPU (where native), fp16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if not args.flicker:
        parser.error("nothing to measure: pass --flicker")
    if args.frames < 2 or args.warmup < 1:
        parser.error("--frames must be >= 2 and --warmup >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from livecast.streamdiff import StreamPipeline
    from livecast.streamdiff.config import StreamParams

    for b in args.blends:
        StreamParams(temporal_blend=b)  # a bad value fails before the model loads
    if make_pipe is None:
        pipe = StreamPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              resolution=args.size)
    else:  # tests: tiny components
        pipe = make_pipe()
    size = pipe.states.default_size[0]
    total = args.warmup + args.frames
    inputs = {"still": still_frames(total, size, args.noise),
              "pan": pan_frames(total, size, args.pan_step)}
    settings = {"strength": args.strength, "num_inference_steps": args.steps}
    results = run_flicker(pipe, inputs, args.blends, args.warmup, settings)

    info = pipe.model_info
    random_weights = bool(info["demo"]) and info["name"] != "demo"  # "demo" itself is the trained one
    rows = []
    for name, runs in results.items():
        off = next((r for r in runs if r["temporal_blend"] == 0), runs[0])
        for r in runs:
            rows.append([name, r["temporal_blend"], r["input_flicker"], r["output_flicker"],
                         r["relative_flicker"], r["output_flicker"] / off["output_flicker"], r["fps"]])
    result = {"model": info["name"], "random_weights": random_weights, "device": info["device"], "dtype": info["dtype"],
              "resolution": size, "frames": args.frames, "warmup": args.warmup, "noise": args.noise,
              "pan_step": args.pan_step, "strength": args.strength, "num_inference_steps": args.steps,
              "metric": "mean |frame_t - frame_{t-1}| in 0-255 units; relative = output / input",
              "flicker": results}
    report("video", ["input", "temporal_blend", "input flicker", "output flicker", "output/input",
                     "vs blend off", "frames/s"], rows, result, args.json)
    print(f"model: {info['name']} {size}x{size} ({'random' if random_weights else 'trained'} weights), "
          f"{info['device']} {info['dtype']}; {args.frames} measured frames per row")
    if random_weights:
        print(f"note: {info['name']} has random weights: the figures show the blend's effect on "
              f"frame-to-frame change, not picture quality")
    return 0
