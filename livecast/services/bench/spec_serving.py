"""`livecast bench serving --workloads quote,edit,chat --speculative off,ngram,suffix [--peer-llama-server PATH]`.

For each livecast `--speculative` setting one server is started, and for the peer one llama-server
per `--peer-spec` type (`none`: plain), one server at a time on the same GGUF. Each runs the
chat workloads (services.bench.spec_workloads) at every `--spec-streams` count, closed loop, greedy,
and then TTFT at `--ttft-sizes` prompt lengths: single requests, a fresh seeded prompt per run (so
no prefix-cache hit), the median over `--ttft-runs` after one warm-up.

Per row: decode tok/s (one stream's speed after its first token: output tokens past the first over
the time past the first), aggregate output tok/s, TTFT and ITL (gaps between streamed chunks: a
speculative step sends several tokens in one chunk), the draft acceptance (livecast: its /metrics
counters; llama.cpp: the `timings` draft counts it streams), whether the greedy text equals livecast
off's, and the ratios to livecast off and to llama.cpp's best setting in the same run.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

import httpx

from livecast.services.bench.latency import WORDS, Result, one_chat_request, one_request, summarize
from livecast.services.bench.llama_server import llama_server_spec_types, llama_server_version, start_llama_server
from livecast.services.bench.report import format_table, report
from livecast.services.bench.spec_workloads import ChatWorkload, chat_workloads

# One connection per request: llama-server drops a kept-alive connection 5 s after its last reply,
# and on a busy machine a request sent on it just then fails ("Server disconnected").
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
SPEC_COUNTERS = ("livecast_spec_draft_tokens_total", "livecast_spec_accepted_tokens_total",
                 "livecast_spec_verify_steps_total")


def spec_counters(http: httpx.Client) -> dict[str, float]:
    """livecast's speculative counters from /metrics (zeros when the server exports none)."""
    values = dict.fromkeys(SPEC_COUNTERS, 0.0)
    for line in http.get("/metrics").raise_for_status().text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values


def ttft_prompts(http: httpx.Client, sizes: list[int], runs: int, seed: int) -> dict[int, list[list[int]]]:
    """`runs + 1` token-id prompts of each size (the first is the warm-up), each of fresh random words."""
    rng = random.Random(f"{seed}:ttft")
    out = {}
    for size in sizes:
        out[size] = []
        for _ in range(runs + 1):
            text = " ".join(rng.choice(WORDS) for _ in range(2 * size + 8))
            ids = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).raise_for_status()
            out[size].append(ids.json()["tokens"][:size])
    return out


async def _closed_loop(url: str, model: str, work: ChatWorkload, streams: int, headers: dict,
                       extra: dict) -> tuple[list[Result], float]:
    """Every item at least once, and at least 2 requests per stream; results in request order."""
    count = max(len(work.items), 2 * streams)
    requests = [work.items[i % len(work.items)] for i in range(count)]
    results: list[Result | None] = [None] * count
    next_index = iter(range(count))
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=0)  # as FRESH_CONNECTIONS

    async def stream(client) -> None:
        for i in next_index:
            results[i] = await one_chat_request(client, model, requests[i], work.max_tokens, **extra)

    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        await asyncio.gather(*(stream(client) for _ in range(streams)))
        return results, time.perf_counter() - start


def _decode_tok_s(results: list[Result]) -> float:
    runs = [r for r in results if r.ok and r.output_tokens > 1]
    seconds = sum(r.e2e_s - r.ttft_s for r in runs)
    return sum(r.output_tokens - 1 for r in runs) / seconds if seconds > 0 else 0.0


def run_workload(url: str, model: str, work: ChatWorkload, streams: int, headers: dict, livecast: bool) -> dict:
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        before = spec_counters(http) if livecast else None
        results, duration = asyncio.run(_closed_loop(url, model, work, streams, headers, {}))
        after = spec_counters(http) if livecast else None
    if livecast:
        drafts, accepted, verifies = (after[k] - before[k] for k in SPEC_COUNTERS)
    else:  # llama-server streams its draft counts in the last chunk's `timings`
        drafts = sum(r.timings.get("draft_n", 0) for r in results)
        accepted, verifies = sum(r.timings.get("draft_n_accepted", 0) for r in results), 0
    return {"workload": work.name, "streams": streams, **summarize(float(streams), results, duration),
            "decode_tok_s": _decode_tok_s(results), "draft_tokens": drafts, "accepted_tokens": accepted,
            "acceptance": accepted / drafts if drafts else None,
            "mean_accepted_length": 1 + accepted / verifies if verifies else None,
            "texts": [r.text for r in results]}


def run_ttft(url: str, model: str, prompts: dict[int, list[list[int]]], headers: dict) -> list[dict]:
    async def one_size(ids_list):
        async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers, limits=FRESH_CONNECTIONS) as client:
            return [await one_request(client, model, ids, 2) for ids in ids_list]

    out = []
    for size, ids_list in prompts.items():
        results = asyncio.run(one_size(ids_list))[1:]  # the first one warms this size up
        ok = [r.ttft_s for r in results if r.ok]
        out.append({"prompt_tokens": size, "runs": len(results), "completed": len(ok),
                    "ttft_p50_ms": 1e3 * statistics.median(ok) if ok else None,
                    "ttft_ms": [1e3 * t for t in ok]})
    return out


def run_setting(url: str, label: str, workloads: list[ChatWorkload], streams: list[int],
                prompts: dict[int, list[list[int]]], api_key: str | None, livecast: bool) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        model = http.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        # which kernels this process computes with (int4/int8, the dense crossover): what "same
        # text as off" depends on across servers
        kernels = (http.get("/health").json().get("llm") or {}).get("quantization_detail") if livecast else None
    # a text of no workload: llama.cpp's ngram-mod pool and livecast's suffix trees outlive a request
    warm = ChatWorkload("warm-up", 8, [[{"role": "user", "content": "Say hello."}]])
    asyncio.run(_closed_loop(url, model, warm, 1, headers, {}))
    runs = []
    for n in streams:
        for work in workloads:
            runs.append(run_workload(url, model, work, n, headers, livecast))
            r = runs[-1]
            print(f"{label} {work.name} x{n}: {r['completed']}/{r['num_requests']}, decode "
                  f"{r['decode_tok_s']:.1f} tok/s, acceptance {r['acceptance']}", file=sys.stderr)
    return {"server": label, "kernels": kernels, "runs": runs, "ttft": run_ttft(url, model, prompts, headers)}


def _same_texts(run: dict, base: dict | None) -> str:
    if base is None:
        return ""
    same = sum(a == b for a, b in zip(run["texts"], base["texts"]))
    return f"{same}/{len(base['texts'])}"


def compare_speculation(args, start_livecast, stop, gguf: str) -> int:
    """Each livecast setting, then each llama.cpp setting, one server at a time; two tables."""
    workloads = chat_workloads(args.workloads.split(","), args.seed, args.items, args.max_tokens)
    streams = [int(s) for s in args.spec_streams.split(",") if s]
    sizes = [int(s) for s in args.ttft_sizes.split(",") if s]
    settings, prompts = [], None
    for spec in args.speculative.split(","):
        proc, url = start_livecast(args, spec)
        try:
            if prompts is None:
                with httpx.Client(base_url=url, timeout=120) as http:
                    prompts = ttft_prompts(http, sizes, args.ttft_runs, args.seed)
            settings.append(run_setting(url, f"livecast {spec}", workloads, streams, prompts, args.api_key, True))
        finally:
            stop(proc)
    version, offered = None, []
    if args.peer_llama_server:
        version, offered = llama_server_version(args.peer_llama_server), llama_server_spec_types(args.peer_llama_server)
        for spec in args.peer_spec.split(","):
            if spec != "none" and spec not in offered:
                print(f"llama.cpp {spec}: not offered by this build (--spec-type: {offered}), skipped", file=sys.stderr)
                continue
            proc, url = start_llama_server(
                args.peer_llama_server, gguf, threads=args.peer_threads, parallel=max(streams),
                ctx_per_slot=max([1024, *(s + 64 for s in sizes)]),
                extra_args=[] if spec == "none" else ["--spec-type", spec])
            try:
                settings.append(run_setting(url, f"llama.cpp {spec}", workloads, streams, prompts, None, False))
            finally:
                stop(proc)
    rows = _rows(settings)
    ttft_rows = [[t["prompt_tokens"], s["server"], f"{t['completed']}/{t['runs']}", t["ttft_p50_ms"],
                  _ratio(t["ttft_p50_ms"], _best_peer_ttft(settings, t["prompt_tokens"]))]
                 for s in settings for t in s["ttft"]]
    config = {"gguf": gguf, "workloads": [w.name for w in workloads], "items": [len(w.items) for w in workloads],
              "max_tokens": [w.max_tokens for w in workloads], "streams": streams, "speculative": args.speculative,
              "num_speculative_tokens": args.num_speculative_tokens, "deterministic": args.deterministic,
              "ttft_sizes": sizes, "ttft_runs": args.ttft_runs,
              "seed": args.seed, "peer": args.peer_llama_server, "peer_version": version,
              "peer_spec_types_offered": offered, "peer_threads": args.peer_threads}
    if sizes:
        print("== TTFT (single request, median; vs llama.cpp's fastest) ==")
        print(format_table(["prompt tokens", "server", "done", "TTFT p50 ms", "vs llama.cpp"], ttft_rows))
    report("serving (speculation)", ["workload", "streams", "server", "done", "decode tok/s", "out tok/s",
                                     "TTFT p50 ms", "ITL p50 ms", "acceptance", "mean len", "same text as off",
                                     "vs livecast off", "vs llama.cpp best"],
           rows, {"config": config, "settings": settings}, args.json)
    every = [r for s in settings for r in s["runs"]]
    return 0 if all(r["completed"] == r["num_requests"] for r in every) else 1


def _acceptance(server: str, run: dict) -> str:
    if run["acceptance"] is not None:
        return f"{run['acceptance']:.2f}"
    return "" if server.endswith((" off", " none")) else "no drafts"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def _best_peer_ttft(settings: list[dict], size: int) -> float | None:
    values = [t["ttft_p50_ms"] for s in settings if s["server"].startswith("llama.cpp")
              for t in s["ttft"] if t["prompt_tokens"] == size and t["ttft_p50_ms"]]
    return min(values) if values else None


def _rows(settings: list[dict]) -> list[list]:
    rows = []
    for i, first in enumerate(settings[0]["runs"] if settings else []):
        runs = [(s["server"], s["runs"][i]) for s in settings]
        base = next((r for name, r in runs if name == "livecast off"), None)
        peers = [r["decode_tok_s"] for name, r in runs if name.startswith("llama.cpp")]
        for name, r in runs:
            rows.append([first["workload"], first["streams"], name, f"{r['completed']}/{r['num_requests']}",
                         r["decode_tok_s"], r["output_throughput"], r["ttft"]["p50_ms"], r["itl"]["p50_ms"],
                         _acceptance(name, r),
                         "" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}",
                         _same_texts(r, base) if name != "livecast off" else "",
                         _ratio(r["decode_tok_s"], base and base["decode_tok_s"]) if name != "livecast off" else "",
                         _ratio(r["decode_tok_s"], max(peers)) if peers and name.startswith("livecast") else ""])
    return rows
