"""`livecast bench webrtc`: glass-to-glass latency of live stylization, measured in a real browser.

Starts `livecast serve --no-llm --latency-probe` in its own process (or targets `--url`, which must
run with --latency-probe), opens web/bench.html in headless Chromium and, for each mode, sends a
30 fps canvas stream whose frames carry an id in pixel blocks (services/probe.py). The server reads
each input id and stamps it on the output; the page decodes the ids of the frames it presents and
reports latency from drawn to presented (p50/p95/p99), output fps and the share of sent frames
never shown. `passthrough` skips the model: the transport floor (encode, RTP, decode, jitter
buffers, render) on the same path. Chromium: `make chromium` (Debian's package).
"""
from __future__ import annotations

import argparse
import shutil
import sys

import httpx

from livecast.services.bench.report import report
from livecast.services.bench.server import start_server, stop_server

CHROMIUM_ARGS = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-features=WebRtcHideLocalIpsWithMdns", "--allow-loopback-in-peer-connection"]
TARGET_P95_MS, TARGET_FPS = 200.0, 15.0


def start_bench_server(args):
    serve = ["--no-llm", "--latency-probe", "--ice-loopback", "--diffusion-model", args.model, "--log-level", "warning"]
    if args.resolution:
        serve += ["--diffusion-resolution", str(args.resolution)]
    return start_server(serve, timeout_s=180)


def run_modes(url: str, args) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright  # a test extra: pip install -e ".[test]"

    settings = {"prompt": args.prompt, "strength": args.strength, "num_inference_steps": args.steps}
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/bench.html")
            for mode in args.modes:
                results[mode] = page.evaluate("options => runBench(options)", {
                    "mode": mode, "durationS": args.duration, "warmupS": args.warmup, "fps": args.fps,
                    "settings": settings})
        finally:
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench webrtc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a server started with --latency-probe (default: start one)")
    parser.add_argument("--model", default="demo", help="diffusion model of the started server")
    parser.add_argument("--resolution", type=int, default=128, help="working side in pixels of the started server")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the sent canvas stream")
    parser.add_argument("--prompt", default="neon city at night, vivid colors")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps (strength picks how many run)")
    parser.add_argument("--modes", nargs="+", default=["passthrough", "stylize"], choices=["passthrough", "stylize"])
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not args.chromium:
        print("livecast bench webrtc: Chromium is not installed (make chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print('livecast bench webrtc: needs Playwright (pip install -e ".[test]")', file=sys.stderr)
        return 2

    proc, url = (None, args.url) if args.url else start_bench_server(args)
    try:
        health = httpx.get(f"{url}/health", timeout=10).json()["diffusion"]
        if not health or not health.get("latency_probe"):
            print(f"livecast bench webrtc: {url} must run the diffusion side with --latency-probe", file=sys.stderr)
            return 2
        results = run_modes(url, args)
    finally:
        if proc is not None:
            stop_server(proc)

    headers = ["mode", "out fps", "p50 ms", "p95 ms", "p99 ms", "dropped %", "server p50/p95 ms", "size"]
    rows = []
    for mode, r in results.items():
        server = (r.get("server_stats") or {}).get("latency_ms") or {}
        rows.append([mode, r["output_fps"], r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["latency_ms"]["p99"],
                     r["dropped_pct"], f"{server.get('p50', 0):.0f}/{server.get('p95', 0):.0f}",
                     "x".join(map(str, r["size"]))])
    stylize = results.get("stylize")
    meets = None
    if stylize and stylize["latency_ms"]["p95"] is not None:
        meets = stylize["latency_ms"]["p95"] < TARGET_P95_MS and stylize["output_fps"] >= TARGET_FPS
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "chromium")},
              "model": health, "results": results,
              "target": {"p95_ms": TARGET_P95_MS, "output_fps": TARGET_FPS, "met": meets}}
    report("webrtc", headers, rows, result, args.json)
    if meets is not None:
        print(f"target p95 < {TARGET_P95_MS:.0f} ms at >= {TARGET_FPS:.0f} fps: {'met' if meets else 'missed'}")
    return 0
