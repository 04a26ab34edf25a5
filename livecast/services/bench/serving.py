"""`livecast bench serving`: online serving latency under Poisson load (after vLLM's benchmark_serving).

With `--streams` / `--peer-llama-server` it runs closed-loop workloads instead (services.bench.streams);
with `--workloads quote,edit,chat` the chat workloads where speculation matters, once per
`--speculative` setting, and TTFT at long prompts (services.bench.spec_serving).

Starts `livecast serve` in its own process (or targets `--url`), then for each request rate
sends the same seeded synthetic workload (prompt and output lengths drawn around --input-len /
--output-len, Poisson arrivals) as streaming /v1/completions requests, and reports request
throughput, output tokens/s, and mean/p50/p99 of time to first token (TTFT), time per output
token after the first (TPOT) and inter-token latency (ITL, the gap between streamed chunks).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

import httpx

from livecast.services.bench.latency import WORDS, one_request, summarize
from livecast.services.bench.report import report
from livecast.services.bench.server import start_server, stop_server
from livecast.services.bench.streams import compare


def build_workload(http: httpx.Client, num: int, input_len: int, output_len: int, seed: int) -> list[tuple]:
    """(prompt token ids, max_tokens) pairs; lengths uniform in [0.5, 1.5] x the means."""
    rng = random.Random(seed)
    work = []
    for _ in range(num):
        n = rng.randint(input_len // 2, input_len * 3 // 2)
        text = " ".join(rng.choice(WORDS) for _ in range(2 * n))
        ids = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).raise_for_status().json()
        work.append((ids["tokens"][:n], rng.randint(max(1, output_len // 2), output_len * 3 // 2)))
    return work


async def run_rate(url: str, model: str, work: list[tuple], rate: float, seed: int, api_key: str | None) -> dict:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=len(work) + 4, max_keepalive_connections=len(work) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as client:
        tasks = []
        start = time.perf_counter()
        for prompt, max_tokens in work:
            tasks.append(asyncio.create_task(one_request(client, model, prompt, max_tokens)))
            if rate != float("inf"):
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(rate, results, duration)


def bench_serve_args(args, speculative: str = "off") -> list[str]:
    """The `livecast serve` flags of a bench server (`speculative`: off, or a --speculative value)."""
    serve = ["--dtype", args.dtype, "--log-level", "warning", "--no-diffusion"]
    if speculative != "off":
        serve += ["--speculative", speculative, "--num-speculative-tokens", str(args.num_speculative_tokens)]
    if args.deterministic:
        serve += ["--deterministic"]
    if args.model:
        serve += ["--model", args.model]
    if args.api_key:
        serve += ["--api-key", args.api_key]
    return serve


def start_bench_server(args, speculative: str = "off"):
    return start_server(bench_serve_args(args, speculative))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench serving", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--model", default=None, help="model for the started server (default: SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--deterministic", action="store_true", help="serve with --deterministic (batch-invariant)")
    parser.add_argument("--rates", default="1,2,4", help="requests/s, comma separated ('inf': all at once)")
    parser.add_argument("--num-prompts", type=int, default=40, help="requests per rate")
    parser.add_argument("--input-len", type=int, default=96)
    parser.add_argument("--output-len", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--streams", default=None,
                        help="closed-loop workloads instead of rates: concurrent streams, e.g. 1,4,16 (with --batch)")
    parser.add_argument("--batch", type=int, default=128, help="with --streams: requests sent at once (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="with --streams: requests per stream")
    parser.add_argument("--peer-llama-server", default=None, metavar="PATH",
                        help="a llama-server binary: run the --streams workloads on it too, same GGUF, and "
                             "print the ratios (implies --streams 1,4,16 --batch 128)")
    parser.add_argument("--peer-threads", type=int, default=2, help="llama-server -t")
    parser.add_argument("--peer-parallel", type=int, default=32, help="llama-server --parallel (slots)")
    spec = parser.add_argument_group("speculation workloads (--workloads)")
    spec.add_argument("--workloads", default=None, metavar="quote,edit,chat",
                      help="chat workloads where speculation matters, once per --speculative setting")
    spec.add_argument("--speculative", default="off,ngram,suffix",
                      help="livecast settings, one server each (off: none)")
    spec.add_argument("--num-speculative-tokens", type=int, default=4)
    spec.add_argument("--spec-streams", default="1", help="concurrent streams per workload, e.g. 1,16")
    spec.add_argument("--items", type=int, default=None, help="items per workload (default: all 8)")
    spec.add_argument("--max-tokens", type=int, default=None, help="override each workload's max_tokens")
    spec.add_argument("--ttft-sizes", default="512,2048", help="prompt tokens for the TTFT runs ('' for none)")
    spec.add_argument("--ttft-runs", type=int, default=5, help="TTFT runs per size (median; after one warm-up)")
    spec.add_argument("--peer-spec", default="none,ngram-mod",
                      help="llama-server --spec-type values, one server each (none: plain); types the build "
                           "lacks are skipped")
    args = parser.parse_args(argv)
    if args.workloads:
        from livecast.engine.model_loader import default_gguf_path
        from livecast.services.bench.spec_serving import compare_speculation

        if args.url:
            parser.error("--workloads starts one server per --speculative setting; it takes no --url")
        if args.peer_llama_server and args.model and not args.model.endswith(".gguf"):
            parser.error("--peer-llama-server needs a .gguf --model (or the default SmolLM2 GGUF)")
        if args.peer_llama_server and not os.access(args.peer_llama_server, os.X_OK):
            parser.error(f"--peer-llama-server: {args.peer_llama_server} is not an executable file "
                         "(docs/BENCHMARKS.md says how to build llama-server)")
        return compare_speculation(args, lambda a, spec: start_bench_server(a, spec),
                                   lambda proc: stop_server(proc),
                                   args.model or str(default_gguf_path()))
    if args.peer_llama_server or args.streams:
        from livecast.engine.model_loader import default_gguf_path

        args.streams = args.streams or "1,4,16"
        if args.peer_llama_server and args.model and not args.model.endswith(".gguf"):
            parser.error("--peer-llama-server needs a .gguf --model (or the default SmolLM2 GGUF)")
        if args.peer_llama_server and not os.access(args.peer_llama_server, os.X_OK):
            parser.error(f"--peer-llama-server: {args.peer_llama_server} is not an executable file "
                         "(docs/BENCHMARKS.md says how to build llama-server)")
        return compare(args, lambda a: (None, a.url) if a.url else start_bench_server(a),
                       lambda proc: proc is not None and stop_server(proc), args.model or str(default_gguf_path()))
    rates = [float(r) for r in args.rates.split(",")]

    proc = None
    url = args.url
    if url is None:
        proc, url = start_bench_server(args)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            model = http.get("/v1/models").raise_for_status().json()["data"][0]["id"]
            # fresh prompts for every rate (and the warm-up), so no run is served from the prefix cache
            n = args.num_prompts
            work = build_workload(http, n * len(rates) + 4, args.input_len, args.output_len, args.seed)
        asyncio.run(run_rate(url, model, work[-4:], float("inf"), args.seed, args.api_key))  # warm-up
        runs = []
        for i, rate in enumerate(rates):
            runs.append(asyncio.run(run_rate(url, model, work[i * n:(i + 1) * n], rate, args.seed, args.api_key)))
            print(f"rate {rate:g} req/s: {runs[-1]['completed']}/{runs[-1]['num_requests']} done in "
                  f"{runs[-1]['duration_s']:.1f}s", file=sys.stderr)
    finally:
        if proc is not None:
            stop_server(proc)

    headers = ["rate req/s", "done", "req/s", "out tok/s", "TTFT mean/p50/p99 ms", "TPOT mean/p50/p99 ms",
               "ITL mean/p50/p99 ms"]
    fmt = lambda s: f"{s['mean_ms']:.0f} / {s['p50_ms']:.0f} / {s['p99_ms']:.0f}"  # noqa: E731
    rows = [[f"{r['request_rate']:g}", f"{r['completed']}/{r['num_requests']}", r["request_throughput"],
             r["output_throughput"], fmt(r["ttft"]), fmt(r["tpot"]), fmt(r["itl"])] for r in runs]
    config = {k: getattr(args, k) for k in ("model", "dtype", "num_prompts", "input_len", "output_len", "seed")}
    report("serving", headers, rows, {"config": {**config, "model": model, "url": args.url}, "runs": runs}, args.json)
    return 0 if all(r["completed"] == r["num_requests"] for r in runs) else 1
