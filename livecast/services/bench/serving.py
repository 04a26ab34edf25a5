"""`livecast bench serving`: online serving latency under Poisson load (after vLLM's benchmark_serving).

With `--streams` / `--peer-llama-server` it runs closed-loop workloads instead (services.bench.streams).

Starts `livecast serve` in its own process (or targets `--url`), then for each request rate
sends the same seeded synthetic workload (prompt and output lengths drawn around --input-len /
--output-len, Poisson arrivals) as streaming /v1/completions requests, and reports request
throughput, output tokens/s, and mean/p50/p99 of time to first token (TTFT), time per output
token after the first (TPOT) and inter-token latency (ITL, the gap between streamed chunks).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx

from livecast.services.bench.report import report
from livecast.services.bench.server import start_server, stop_server

WORDS = ("the of and to in is was for on that with as by at from his her they this which be have are an not one "
         "had you or were their all we there been has when who will more no if out so said what up its about into "
         "than them can only other new some could time these two may then do first any my now such like our over "
         "man me even most made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still own see men work "
         "long get here between both life being under never day same another know while last might us great old "
         "year off come since against go came right used take three river music city light story garden voice").split()


@dataclass(slots=True)
class Result:
    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""


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


async def one_request(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> Result:
    result = Result()
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["text"]:
                    if result.ttft_s == 0.0:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
        result.e2e_s = time.perf_counter() - start
        result.ok = result.output_tokens > 0
    except (httpx.HTTPError, ValueError) as exc:
        result.error = repr(exc)
    return result


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


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean_ms": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"mean_ms": 1e3 * statistics.fmean(values), "p50_ms": 1e3 * statistics.median(values), "p99_ms": 1e3 * p99}


def summarize(rate: float, results: list[Result], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    return {"request_rate": rate, "num_requests": len(results), "completed": len(done),
            "errors": sorted({r.error for r in results if not r.ok})[:3], "duration_s": duration,
            "request_throughput": len(done) / duration, "output_throughput": output / duration,
            "total_token_throughput": (output + sum(r.prompt_tokens for r in done)) / duration,
            "mean_prompt_tokens": statistics.fmean([r.prompt_tokens for r in done]) if done else 0.0,
            "mean_output_tokens": output / len(done) if done else 0.0,
            "ttft": _stats([r.ttft_s for r in done]), "tpot": _stats(tpot),
            "itl": _stats([gap for r in done for gap in r.itl_s]), "e2e": _stats([r.e2e_s for r in done])}


def start_bench_server(args):
    serve = ["--dtype", args.dtype, "--log-level", "warning", "--no-diffusion"]
    if args.model:
        serve += ["--model", args.model]
    if args.api_key:
        serve += ["--api-key", args.api_key]
    return start_server(serve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench serving", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--model", default=None, help="model for the started server (default: SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--api-key", default=None)
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
    args = parser.parse_args(argv)
    if args.peer_llama_server or args.streams:
        from livecast.engine.model_loader import default_gguf_path
        from livecast.services.bench.streams import compare

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
