"""`livecast bench diffusion`: StreamPipeline img2img fps vs diffusers on the same weights.

1. demo weights, 256x256: StreamPipeline (tiny VAE, cached prompt, one step) against diffusers'
   AutoPipelineForImage2Image (num_inference_steps=2, strength=0.5, guidance_scale=0, its default
   KL VAE), same dtype and device, measured in alternating rounds so background load hits both.
2. multi-stream throughput: StreamBatcher with 1, 2, 4, 8 streams, frames/s summed over streams.
3. sd-turbo-shape (SD-Turbo's architecture, random weights): single-stream fps at 512x512.
4. the trained demo (when its weights ship) against `demo-random`, both through
   `StreamPipeline.from_pretrained` at the demo resolution, in alternating rounds: the trained
   weights must not cost frames (issue 28).
5. with `--controlnet SOURCE` (a diffusers ControlNet folder, or controlnet-shape): one pipeline
   (`--controlnet-model`, the demo by default) with the ControlNet, one stream at scale 0 and one
   at scale 1 (canny map + ControlNet + residuals) in alternating rounds: the cost as a ratio.
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from livecast.services.bench.report import report

PROMPT = "a cyberpunk city at night, neon lights"


def video_frames(num: int, size: int) -> list[PIL.Image.Image]:
    """A moving disc over a gradient: every frame differs, like a live camera."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x, y, size - 1 - x], -1) * (255 / (size - 1))
    frames = []
    for i in range(num):
        image = base.copy()
        cx = size * (0.3 + 0.4 * (i % 20) / 20)
        image[(x - cx) ** 2 + (y - size / 2) ** 2 < (size / 5) ** 2] = (255, 255, 0)
        frames.append(PIL.Image.fromarray(image.astype(np.uint8)))
    return frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(contenders: dict[str, Callable[[PIL.Image.Image], Any]], frames: list,
                rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Per-round frames/s of each contender, alternating contenders round by round.

    The machine may be shared: alternating exposes both contenders to the same background load,
    and callers report the best round (least disturbed) next to the median.
    """
    fps: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, len(frames) // rounds)
    for r in range(rounds):
        chunk = frames[r * per_round:(r + 1) * per_round]
        for name, run in contenders.items():
            _sync(device)
            start = time.perf_counter()
            for image in chunk:
                run(image)
            _sync(device)
            fps[name].append(len(chunk) / (time.perf_counter() - start))
    return fps


def best_and_median(samples: list[float]) -> tuple[float, float]:
    return max(samples), float(np.median(samples))


def demo_vs_diffusers(args, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline

    from livecast.streamdiff import StreamPipeline
    from livecast.streamdiff.demo import DEMO, build_random_components

    parts = build_random_components("demo")
    # Two copies of the same weights: StreamPipeline converts its modules to channels_last in
    # place, which must not leak into the baseline.
    ours = copy.deepcopy(parts)
    stream = StreamPipeline(ours["unet"], ours["tiny_vae"], ours["text_encoder"], ours["tokenizer"],
                            ours["scheduler"], device=device, dtype=dtype, name="demo", demo=True,
                            resolution=DEMO.resolution)
    stream.prepare(PROMPT, num_inference_steps=2, strength=0.5, guidance_scale=0.0)
    base = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                   tokenizer=parts["tokenizer"], unet=parts["unet"],
                                   scheduler=parts["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    baseline = AutoPipelineForImage2Image.from_pipe(base).to(device=device, dtype=dtype)
    baseline.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu")

    def run_diffusers(image):
        generator.manual_seed(0)
        return baseline(PROMPT, image=image, num_inference_steps=2, strength=0.5,
                         guidance_scale=0.0, generator=generator).images[0]

    frames = video_frames(args.frames, DEMO.resolution)
    contenders = {"diffusers": run_diffusers, "streamdiff": stream}
    time_rounds(contenders, frames[:2], rounds=1, device=device)  # warm-up
    fps = time_rounds(contenders, frames, rounds=args.rounds, device=device)
    return stream, {name: best_and_median(samples) for name, samples in fps.items()}


def multi_stream(stream, args, device: torch.device) -> dict[int, tuple[float, float]]:
    """Frames/s summed over streams, each stream submitting one frame per batched step."""
    from livecast.streamdiff import StreamBatcher

    frames = video_frames(args.batch_steps + 1, stream.states.default_size[0])
    throughput = {}
    for num_streams in args.streams:
        batcher = StreamBatcher(stream, max_batch_size=max(args.streams))
        for i in range(num_streams):
            batcher.add_stream(i, prompt=f"{PROMPT} #{i}", seed=i, strength=0.5)

        def one_step(image) -> None:
            futures = [batcher.submit(i, image) for i in range(num_streams)]
            while batcher.num_pending():
                batcher.step()
            for future in futures:
                future.result()

        one_step(frames[0])  # warm-up: builds the stream states
        samples = time_rounds({"batch": one_step}, frames[1:], args.rounds, device)["batch"]
        throughput[num_streams] = best_and_median([num_streams * v for v in samples])
    return throughput


def turbo_shape(args, device: torch.device, dtype: torch.dtype) -> tuple[float, int, int]:
    from livecast.streamdiff import StreamPipeline

    size = args.turbo_size
    pipe = StreamPipeline.from_pretrained("sd-turbo-shape", device=device, dtype=dtype,
                                          resolution=size)
    pipe.prepare(PROMPT, num_inference_steps=2, strength=0.5, guidance_scale=0.0)
    frames = video_frames(args.turbo_frames + 1, size)
    pipe(frames[0])  # warm-up
    samples = time_rounds({"turbo": pipe}, frames[1:], rounds=args.turbo_frames, device=device)
    return best_and_median(samples["turbo"]), size, args.turbo_frames


def trained_vs_random(args, device: torch.device, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """Single-stream fps of the shipped trained demo and of demo-random, alternating rounds."""
    from livecast.streamdiff import StreamPipeline
    from livecast.streamdiff.demo import DEMO

    contenders = {}
    for name in ("demo", "demo-random"):
        pipe = StreamPipeline.from_pretrained(name, device=str(device), dtype=dtype)
        pipe.prepare(PROMPT, num_inference_steps=2, strength=0.5, guidance_scale=0.0)
        contenders[name] = pipe
    frames = video_frames(args.frames, DEMO.resolution)
    time_rounds(contenders, frames[:2], rounds=1, device=device)  # warm-up
    fps = time_rounds(contenders, frames, rounds=args.rounds, device=device)
    return {name: best_and_median(samples) for name, samples in fps.items()}


def controlnet_cost(pipe, frames: list, rounds: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """Single-stream frames/s (best, median) of `pipe` with its ControlNet off (controlnet_scale 0)
    and on (1), alternating round by round; frames[:2] warm both up."""
    from livecast.streamdiff.config import StreamParams

    settings = dict(prompt=PROMPT, num_inference_steps=2, strength=0.5, guidance_scale=0.0)
    states = {name: pipe.new_state(StreamParams(controlnet_scale=scale, **settings))
              for name, scale in (("off", 0.0), ("on", 1.0))}
    contenders = {name: (lambda image, state=state: pipe.run([(state, image)]))
                  for name, state in states.items()}
    time_rounds(contenders, frames[:2], rounds=1, device=device)
    fps = time_rounds(contenders, frames[2:], rounds=rounds, device=device)
    return {name: best_and_median(samples) for name, samples in fps.items()}


def controlnet_rows(args, device: torch.device, dtype: torch.dtype) -> tuple[list, dict[str, Any]]:
    from livecast.streamdiff import StreamPipeline

    options = {"resolution": args.controlnet_size} if args.controlnet_size else {}
    pipe = StreamPipeline.from_pretrained(args.controlnet_model, device=device, dtype=dtype,
                                          controlnet=args.controlnet, **options)
    side = pipe.states.default_size[0]
    fps = controlnet_cost(pipe, video_frames(args.frames + 2, side), args.rounds, device)
    (off, off_median), (on, on_median) = fps["off"], fps["on"]
    model = f"{args.controlnet_model} {side}x{side}"
    rows = [["streamdiff StreamPipeline, ControlNet off (scale 0)", model, 1, off, off_median, "-"],
            [f"streamdiff StreamPipeline, ControlNet on ({args.controlnet}): x{on / off:.2f} of off",
             model, 1, on, on_median, "-"]]
    result = {"controlnet": args.controlnet, "controlnet_model": args.controlnet_model,
              "controlnet_resolution": side, "controlnet_off_fps": off, "controlnet_on_fps": on,
              "controlnet_off_fps_median": off_median, "controlnet_on_fps_median": on_median,
              "controlnet_ratio": on / off, "controlnet_ratio_median": on_median / off_median}
    return rows, result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench diffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--frames", type=int, default=40, help="frames per contender (demo)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-steps", type=int, default=15, help="batched steps per stream count")
    parser.add_argument("--turbo-size", type=int, default=512, help="sd-turbo-shape resolution")
    parser.add_argument("--turbo-frames", type=int, default=None,
                        help="sd-turbo-shape frames (default 2 on CPU, 50 on CUDA); 0 skips it")
    parser.add_argument("--controlnet", metavar="SOURCE", default=None,
                        help="also time a ControlNet (a diffusers folder, or controlnet-shape): on vs off")
    parser.add_argument("--controlnet-model", default="demo",
                        help="the model the ControlNet is timed on (demo, sd-turbo-shape, a folder)")
    parser.add_argument("--controlnet-size", type=int, default=None,
                        help="resolution of the ControlNet timing (default: the model's)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on CPU, fp16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from livecast.streamdiff.components import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.turbo_frames is None:
        args.turbo_frames = 50 if device.type == "cuda" else 2

    stream, fps = demo_vs_diffusers(args, device, dtype)
    (stream_fps, stream_median), (base_fps, base_median) = fps["streamdiff"], fps["diffusers"]
    batched = multi_stream(stream, args, device)
    res = stream.states.default_size[0]
    demo = f"demo {res}x{res}"
    rows = [["diffusers AutoPipelineForImage2Image (KL VAE)", demo, 1, base_fps, base_median, 1.0],
            ["streamdiff StreamPipeline (tiny VAE)", demo, 1, stream_fps, stream_median,
             stream_fps / base_fps]]
    for num_streams, (best, median) in batched.items():
        rows.append([f"streamdiff StreamBatcher x{num_streams}", demo, num_streams, best, median,
                     best / base_fps])
    result: dict[str, Any] = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "demo_resolution": res,
        "frames": args.frames, "rounds": args.rounds, "statistic": "best round (median alongside)",
        "stream_fps": stream_fps, "diffusers_fps": base_fps, "speedup": stream_fps / base_fps,
        "stream_fps_median": stream_median, "diffusers_fps_median": base_median,
        "multi_stream_fps": {str(n): best for n, (best, _) in batched.items()},
        "multi_stream_fps_median": {str(n): median for n, (_, median) in batched.items()},
    }
    from livecast.streamdiff.demo import demo_weights_shipped

    if demo_weights_shipped():
        both = trained_vs_random(args, device, dtype)
        (trained, trained_median), (random_, random_median) = both["demo"], both["demo-random"]
        rows += [["streamdiff StreamPipeline, demo (trained, shipped)", demo, 1, trained, trained_median,
                  f"{trained / random_:.2f}x demo-random"],
                 ["streamdiff StreamPipeline, demo-random", demo, 1, random_, random_median, "-"]]
        result.update(trained_demo_fps=trained, trained_demo_fps_median=trained_median,
                      random_demo_fps=random_, random_demo_fps_median=random_median)
    if args.turbo_frames > 0:
        (turbo_fps, turbo_median), size, frames = turbo_shape(args, device, dtype)
        rows.append(["streamdiff StreamPipeline (tiny VAE)", f"sd-turbo-shape {size}x{size}", 1,
                     turbo_fps, turbo_median, "-"])
        result.update(sd_turbo_shape_fps=turbo_fps, sd_turbo_shape_fps_median=turbo_median,
                      sd_turbo_shape_resolution=size, sd_turbo_shape_frames=frames)
    if args.controlnet:
        more_rows, more = controlnet_rows(args, device, dtype)
        rows += more_rows
        result.update(more)
    report("diffusion", ["pipeline", "model", "streams", "frames/s (best)", "frames/s (median)",
                         "x diffusers"], rows, result, args.json)
    return 0
