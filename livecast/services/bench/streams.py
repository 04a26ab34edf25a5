"""Closed-loop workloads for `livecast bench serving --streams … [--peer-llama-server PATH]`.

A user chatting is a stream: it sends its next request when the last one finished. "N streams"
keeps N such clients busy; "batch M" sends M requests at once. The same seeded token-id prompts
go to livecast and, when a `llama-server` binary is given, to llama.cpp on the same GGUF file,
one server at a time (never both on the cores at once), and one table shows the ratio.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass

import httpx

from livecast.services.bench.latency import WORDS, one_request, summarize
from livecast.services.bench.llama_server import llama_server_version, start_llama_server
from livecast.services.bench.report import report


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    streams: int  # concurrent clients (a batch: all requests at once)
    requests: list[tuple[list[int], int]]  # (prompt token ids, max_tokens)


def _prompt(http: httpx.Client, rng: random.Random, num_tokens: int) -> list[int]:
    text = " ".join(rng.choice(WORDS) for _ in range(2 * num_tokens + 8))
    ids = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).raise_for_status().json()
    return ids["tokens"][:num_tokens]


def build_workloads(http: httpx.Client, streams: list[int], batch: int, seed: int, rounds: int) -> list[Workload]:
    """1 stream: 16-token prompts, 256 out. N streams: chat-sized prompts (48–144) with 128 out,
    `rounds` requests per stream. The batch: prompts of 32–512 tokens with 64 out, all at once."""
    rng = random.Random(seed)
    out = []
    for n in streams:
        if n == 1:
            reqs = [(_prompt(http, rng, 16), 256) for _ in range(rounds)]
        else:
            reqs = [(_prompt(http, rng, rng.randint(48, 144)), 128) for _ in range(n * rounds)]
        out.append(Workload(f"{n} stream{'s' if n > 1 else ''}", n, reqs))
    if batch:
        out.append(Workload(f"batch {batch}", batch, [(_prompt(http, rng, rng.randint(32, 512)), 64)
                                                      for _ in range(batch)]))
    return out


async def run_workload(url: str, model: str, work: Workload, api_key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=work.streams + 4, max_keepalive_connections=work.streams + 4)
    queue = list(reversed(work.requests))
    results = []

    async def stream(client) -> None:
        while queue:
            prompt, max_tokens = queue.pop()
            results.append(await one_request(client, model, prompt, max_tokens))

    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        await asyncio.gather(*(stream(client) for _ in range(work.streams)))
        duration = time.perf_counter() - start
    return summarize(float(work.streams), results, duration)


def run_all(url: str, workloads: list[Workload], api_key: str | None, label: str) -> list[dict]:
    with httpx.Client(base_url=url, timeout=60) as http:
        model = http.get("/v1/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
                         ).raise_for_status().json()["data"][0]["id"]
    warm = Workload("warm-up", 2, [(w.requests[0][0][:32], 8) for w in workloads[:2]])
    asyncio.run(run_workload(url, model, warm, api_key))
    runs = []
    for work in workloads:
        runs.append({"workload": work.name, **asyncio.run(run_workload(url, model, work, api_key))})
        print(f"{label} {work.name}: {runs[-1]['completed']}/{runs[-1]['num_requests']} in "
              f"{runs[-1]['duration_s']:.1f}s, {runs[-1]['output_throughput']:.1f} tok/s", file=sys.stderr)
    return runs


def compare(args, start_livecast, stop, gguf: str) -> int:
    """Run every workload on livecast, then (with a peer) on llama-server; print one table."""
    streams = [int(s) for s in args.streams.split(",") if s]
    proc, url = start_livecast(args)
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            workloads = build_workloads(http, streams, args.batch, args.seed, args.rounds)
        ours = run_all(url, workloads, args.api_key, "livecast")
    finally:
        stop(proc)
    peer, version = None, None
    if args.peer_llama_server:
        version = llama_server_version(args.peer_llama_server)
        proc, url = start_llama_server(args.peer_llama_server, gguf, threads=args.peer_threads,
                                       parallel=args.peer_parallel, ctx_per_slot=1024)
        try:
            peer = run_all(url, workloads, None, "llama.cpp")
        finally:
            stop(proc)
    headers = ["workload", "server", "done", "out tok/s", "TTFT p50 ms", "TPOT p50 ms", "vs llama.cpp"]
    rows = []
    for i, work in enumerate(workloads):
        pairs = [("livecast", ours[i])] + ([("llama.cpp", peer[i])] if peer else [])
        for name, r in pairs:
            ratio = (f"{r['output_throughput'] / peer[i]['output_throughput']:.2f}x"
                     if peer and name == "livecast" and peer[i]["output_throughput"] else "")
            rows.append([work.name, name, f"{r['completed']}/{r['num_requests']}", r["output_throughput"],
                         r["ttft"]["p50_ms"], r["tpot"]["p50_ms"], ratio])
    config = {"gguf": gguf, "streams": streams, "batch": args.batch, "rounds": args.rounds, "seed": args.seed,
              "peer": args.peer_llama_server, "peer_version": version, "peer_threads": args.peer_threads,
              "peer_parallel": args.peer_parallel}
    report("serving (streams)", headers, rows, {"config": config, "livecast": ours, "llama_cpp": peer},
           args.json)
    every = ours + (peer or [])
    return 0 if all(r["completed"] == r["num_requests"] for r in every) else 1
