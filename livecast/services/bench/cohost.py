"""`livecast bench cohost`: a live video stream and the LLM serving workload on one device.

Starts one server hosting both engines (demo diffusion in `--latency-probe` mode, SmolLM2) and
runs three phases against it: the video stream alone (an aiortc client sending 256x256 frames
whose ids are stamped in pixels), the LLM workload alone (streaming completions, all requests at
once), then both together. Co-hosting works when video p95 stays near its solo figure and the LLM
keeps most of its solo throughput.
"""
from __future__ import annotations

import argparse
import asyncio

import httpx

from livecast.services.bench.report import report
from livecast.services.bench.server import start_server, stop_server
from livecast.services.bench.serving import build_workload, run_rate
from livecast.services.bench.video_client import VideoProbe


async def video_phase(url: str, args, during=None) -> tuple[dict, dict | None]:
    """Measure the video stream for `args.seconds`, or for as long as `during` (a coroutine) runs."""
    probe = VideoProbe(url, fps=args.fps, size=args.size)
    try:
        await probe.connect(prompt=args.prompt, strength=args.strength)
        await asyncio.sleep(args.warmup)
        probe.begin()
        llm = await during if during is not None else await asyncio.sleep(args.seconds)
        return probe.end(), llm
    finally:
        await probe.close()


async def run(url: str, args) -> dict:
    with httpx.Client(base_url=url, timeout=60) as http:
        model = http.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        work = build_workload(http, args.llm_requests, args.input_len, args.output_len, args.seed)
    await run_rate(url, model, work[:2], float("inf"), args.seed, None)  # warm-up
    video_solo, _ = await video_phase(url, args)
    llm_solo = await run_rate(url, model, work, float("inf"), args.seed, None)
    video_cohost, llm_cohost = await video_phase(url, args, run_rate(url, model, work, float("inf"), args.seed, None))
    return {"video_solo": video_solo, "video_cohost": video_cohost, "llm_solo": llm_solo, "llm_cohost": llm_cohost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench cohost", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server started with --latency-probe")
    parser.add_argument("--model", default=None, help="LLM for the started server (default: SmolLM2-135M)")
    parser.add_argument("--video-share", type=float, default=None,
                        help="the started server's --video-share (default: the server's own)")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15.0, help="video-alone measurement window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--prompt", default="a watercolor painting")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--llm-requests", type=int, default=24)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        serve = ["--latency-probe", "--ice-loopback", "--diffusion-resolution", str(args.size), "--log-level", "warning"]
        serve += ["--model", args.model] if args.model else []
        serve += ["--video-share", str(args.video_share)] if args.video_share is not None else []
        proc, url = start_server(serve)
    try:
        phases = asyncio.run(run(url, args))
    finally:
        if proc is not None:
            stop_server(proc)
    vs, vc, ls, lc = phases["video_solo"], phases["video_cohost"], phases["llm_solo"], phases["llm_cohost"]
    result = {"video_p95_ms_solo": vs["p95_ms"], "video_p95_ms_cohost": vc["p95_ms"],
              "video_fps_solo": vs["fps_out"], "video_fps_cohost": vc["fps_out"],
              "llm_tok_s_solo": ls["output_throughput"], "llm_tok_s_cohost": lc["output_throughput"],
              "video_p95_ratio": vc["p95_ms"] / vs["p95_ms"],
              "llm_throughput_ratio": lc["output_throughput"] / ls["output_throughput"],
              "fps_in": args.fps, "size": args.size, "phases": phases}
    def llm_cells(phase: dict) -> list[str]:
        return [f"{phase['output_throughput']:.1f}", f"{phase['ttft']['p50_ms']:.0f}", f"{phase['tpot']['p50_ms']:.0f}"]

    rows = [["video alone", f"{vs['fps_out']:.1f}", f"{vs['p50_ms']:.0f}", f"{vs['p95_ms']:.0f}",
             f"{vs['dropped_pct']:.0f}%", "-", "-", "-"],
            ["LLM alone", "-", "-", "-", "-", *llm_cells(ls)],
            ["both together", f"{vc['fps_out']:.1f}", f"{vc['p50_ms']:.0f}", f"{vc['p95_ms']:.0f}",
             f"{vc['dropped_pct']:.0f}%", *llm_cells(lc)]]
    report("cohost", ["phase", "video fps out", "video p50 ms", "video p95 ms", "dropped", "LLM out tok/s",
                      "LLM TTFT p50 ms", "LLM TPOT p50 ms"], rows, result, args.json)
    print(f"co-hosted video p95 = {result['video_p95_ratio']:.2f}x solo (target <= 1.5x); "
          f"co-hosted LLM throughput = {100 * result['llm_throughput_ratio']:.0f}% of solo (target >= 50%)")
    return 0
