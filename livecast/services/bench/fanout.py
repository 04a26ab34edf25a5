"""`livecast bench fanout`: one WHIP source watched by N WHEP viewers, against one viewer, and
against the per-viewer way (N separate /v1/webrtc/offer sessions, one UNet row per viewer).

Starts `livecast serve --no-llm --ice-loopback --latency-probe` in its own process (or targets `--url`;
the per-viewer sessions count frames by the probe's ids). For each
viewer count, a synthetic camera publishes over WHIP at `--fps`; after `--warmup` seconds the
source's output fps and each viewer's received fps are measured for `--duration` seconds. Targets
(issue 27): with 8 viewers the source keeps >= 90% of its single-viewer fps, and each viewer
receives >= 90% of the frames produced.
"""
from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlencode

import httpx

from livecast.services.bench.report import report
from livecast.services.bench.server import start_server, stop_server
from livecast.services.bench.video_client import IdCamera, VideoProbe
from livecast.services.bench.whip_client import WhepViewer, WhipPublisher
from livecast.services.media.ice import use_loopback_only
from livecast.services.media.jitterbuffer import reassemble_on_marker

TARGET_SOURCE_SHARE, TARGET_VIEWER_SHARE = 0.90, 0.90


async def _source_frames(http: httpx.AsyncClient, stream_id: str) -> int:
    return (await http.get(f"/v1/streams/{stream_id}")).json()["stats"]["frames_out"]


async def fan_out(url: str, viewers: int, args) -> dict:
    """One source, `viewers` WHEP viewers: source fps and what each viewer received."""
    publisher = WhipPublisher(url, IdCamera(args.fps, args.size), audio=False)
    players = [WhepViewer(url) for _ in range(viewers)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        try:
            response = await publisher.publish("?" + urlencode({"prompt": args.prompt, "strength": args.strength}))
            response.raise_for_status()
            for player in players:
                (await player.watch(publisher.stream_id)).raise_for_status()
            await asyncio.sleep(args.warmup)
            made0, got0 = await _source_frames(http, publisher.stream_id), [len(p.frames) for p in players]
            await asyncio.sleep(args.duration)
            made = await _source_frames(http, publisher.stream_id) - made0
            got = [len(p.frames) - g for p, g in zip(players, got0)]
        finally:
            for player in players:
                await player.close()
            await publisher.close()
            if publisher.location:
                await http.delete(publisher.location)
    return {"viewers": viewers, "source_fps": made / args.duration, "frames_made": made,
            "viewer_fps_min": min(got) / args.duration, "viewer_fps_mean": sum(got) / len(got) / args.duration,
            "viewer_share_min": min(got) / max(made, 1)}


async def per_viewer_sessions(url: str, viewers: int, args) -> dict:
    """The per-viewer way: each viewer its own stylized session of the same camera."""
    probes = [VideoProbe(url, fps=args.fps, size=args.size) for _ in range(viewers)]
    try:
        for probe in probes:
            await probe.connect(prompt=args.prompt, strength=args.strength)
        await asyncio.sleep(args.warmup)
        results = await asyncio.gather(*(p.measure(args.duration) for p in probes))
    finally:
        for probe in probes:
            await probe.close()
    fps = [r["fps_out"] for r in results]
    return {"viewers": viewers, "viewer_fps_min": min(fps), "viewer_fps_mean": sum(fps) / len(fps)}


async def run(url: str, args) -> dict:
    use_loopback_only()
    reassemble_on_marker()
    results = {"whep": [await fan_out(url, n, args) for n in (1, args.viewers)]}
    if args.sessions:
        results["sessions"] = [await per_viewer_sessions(url, args.viewers, args)]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a server with the media room and --ice-loopback (default: start one)")
    parser.add_argument("--model", default="demo", help="diffusion model of the started server")
    parser.add_argument("--resolution", type=int, default=128, help="working side in pixels of the started server")
    parser.add_argument("--viewers", type=int, default=8, help="viewers of the one source (compared with 1)")
    parser.add_argument("--fps", type=float, default=30.0, help="the camera's frame rate")
    parser.add_argument("--size", type=int, default=160, help="the camera's side in pixels")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--prompt", default="ink")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--sessions", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure N separate WebRTC sessions (one UNet row per viewer)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.viewers < 1:
        parser.error("--viewers must be >= 1")
    proc, url = None, args.url
    if url is None:
        serve = ["--no-llm", "--ice-loopback", "--latency-probe", "--diffusion-model", args.model, "--log-level", "warning",
                 "--diffusion-resolution", str(args.resolution), "--max-whep-viewers", str(max(32, args.viewers)),
                 "--max-video-sessions", str(max(4, args.viewers))]
        proc, url = start_server(serve, timeout_s=180)
    try:
        model = httpx.get(f"{url}/health", timeout=10).json()["diffusion"]
        results = asyncio.run(run(url, args))
    finally:
        if proc is not None:
            stop_server(proc)
    one, many = results["whep"]
    rows = [[f"WHEP, {r['viewers']} viewer(s)", r["source_fps"], r["viewer_fps_min"], r["viewer_fps_mean"],
             100 * r["viewer_share_min"]] for r in results["whep"]]
    rows += [[f"{r['viewers']} WebRTC sessions (per viewer)", "", r["viewer_fps_min"], r["viewer_fps_mean"], ""]
             for r in results.get("sessions", [])]
    source_share = many["source_fps"] / max(one["source_fps"], 1e-9)
    met = source_share >= TARGET_SOURCE_SHARE and many["viewer_share_min"] >= TARGET_VIEWER_SHARE
    result = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "model": model, "results": results,
              "source_fps_share": source_share,
              "target": {"source_share": TARGET_SOURCE_SHARE, "viewer_share": TARGET_VIEWER_SHARE, "met": met}}
    report("fanout", ["case", "source fps", "viewer fps min", "viewer fps mean", "min viewer share %"], rows,
           result, args.json)
    print(f"{args.viewers} viewers: source keeps {100 * source_share:.0f}% of its 1-viewer fps; the least-served "
          f"viewer got {100 * many['viewer_share_min']:.0f}% of the frames made (targets >= 90%: "
          f"{'met' if met else 'missed'})")
    return 0
