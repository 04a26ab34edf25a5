"""`livecast bench scale`: what a second LLM replica and prefix-aware routing buy on this machine.

Runs local Ray clusters in turn (services.scale.launcher.Cluster; default plans: 1 replica,
2 replicas routed by prefix, 2 routed round-robin), all requests through the ingress:
- "distinct": --num-distinct streaming completions of distinct random prompts, all in flight at
  once: output tok/s and TTFT p50/p95 (1 vs 2 replicas);
- "shared": --num-systems system prompts x --per-system chat requests with different user turns,
  shuffled, --concurrency in flight: prefix-cache token hit rate (1 - prefilled / prompt tokens;
  prefilled from each replica's `livecast_prompt_tokens` counter) and TTFT (prefix vs round-robin).
Each replica's KV cache holds about --cache-systems system prompts, so locality decides hits.
CPU seconds per replica pid (psutil), this process (ingress + load generator) and Ray's daemons
show where the cores go.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from livecast.engine.model_loader import resolve_model
from livecast.services.bench.latency import WORDS, one_request
from livecast.services.bench.report import report
from livecast.services.scale.routing import POLICIES

MODEL_NAME = "bench"


def tiny_model(folder: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer: replicas load in seconds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    source = resolve_model(None)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            (folder / name).write_bytes((source / name).read_bytes())
    return folder


def kv_bytes_per_token(model: Path) -> int:
    c = json.loads((model / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim * 4  # K+V, fp32


def make_settings(model: Path, kv_tokens: int, data_dir: str):
    from livecast.engine import EngineConfig
    from livecast.services.agents.config import AgentsConfig
    from livecast.services.retrieval.config import RetrievalConfig
    from livecast.services.sandbox.config import SandboxConfig
    from livecast.services.llm.config import LLMConfig
    from livecast.services.settings import ServerSettings

    engine = EngineConfig(model=str(model), dtype="float32", kv_cache_memory=kv_tokens * kv_bytes_per_token(model))
    return ServerSettings(port=0, engine=engine, llm=LLMConfig(served_model_name=MODEL_NAME), enable_diffusion=False,
                          agents=AgentsConfig(data_dir=data_dir), sandbox=SandboxConfig(enabled=False),
                          retrieval=RetrievalConfig(embedding_model="none"))


def text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def shared_workload(args, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    systems = [f"You are assistant {s}. " + text(rng, args.system_words) for s in range(args.num_systems)]
    work = [(s, f"Question {u}: " + text(rng, args.user_words)) for s in systems for u in range(args.per_system)]
    rng.shuffle(work)
    return work


async def chat_request(client: httpx.AsyncClient, model: str, system: str, user: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    out = {"ok": False, "ttft_s": 0.0, "prompt_tokens": 0, "output_tokens": 0, "replica": ""}
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            out["replica"] = r.headers.get("x-livecast-replica", "")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    out["prompt_tokens"], out["output_tokens"] = chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and not out["ttft_s"]:
                    out["ttft_s"] = time.perf_counter() - start
            out["ok"] = r.status_code == 200 and out["output_tokens"] > 0
    except (httpx.HTTPError, ValueError) as exc:
        out["error"] = repr(exc)
    return out


async def _bounded(coros, concurrency: int) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def run(coro):
        async with gate:
            return await coro
    return await asyncio.gather(*(run(c) for c in coros))


def prefilled_tokens(replicas: list[dict]) -> dict[str, float]:
    """Each replica's `livecast_prompt_tokens_total`: prompt tokens it computed (prefix-cache hits excluded)."""
    out = {}
    for r in replicas:
        metrics = httpx.get(f"{r['address']}/metrics", timeout=30).text
        out[r["id"]] = next(s.value for f in text_string_to_metric_families(metrics)
                            for s in f.samples if s.name == "livecast_prompt_tokens_total")
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each replica, this process, and every other descendant (Ray's daemons)."""
    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0
    me = psutil.Process()
    out = {rid: used(psutil.Process(pid)) for rid, pid in pids.items() if psutil.pid_exists(pid)}
    out["ingress+client"] = used(me)
    out["ray"] = sum(used(p) for p in me.children(recursive=True) if p.pid not in pids.values())
    return out


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1e3 * ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def measure(cluster, name: str, workload: str, args, seed: int) -> dict:
    """One workload through the cluster's ingress; returns the row's figures."""
    replicas = [r for r in cluster.replicas() if r["kind"] == "llm"]
    pids = {r["id"]: r["pid"] for r in replicas}
    prefilled, cpu = prefilled_tokens(replicas), cpu_seconds(pids)
    limits = httpx.Limits(max_connections=args.concurrency + args.num_distinct + 8)
    model = httpx.get(f"{cluster.url}/v1/models", timeout=30).raise_for_status().json()["data"][0]["id"]

    async def go():
        async with httpx.AsyncClient(base_url=cluster.url, timeout=600, limits=limits) as client:
            if workload == "distinct":
                rng = random.Random(seed)
                prompts = [text(rng, args.distinct_words) for _ in range(args.num_distinct)]
                return await asyncio.gather(*(one_request(client, model, p, args.output_len) for p in prompts))
            return await _bounded([chat_request(client, model, s, u, args.output_len) for s, u in shared_workload(args, seed)],
                                  args.concurrency)
    start = time.perf_counter()
    results = asyncio.run(go())
    duration = time.perf_counter() - start
    results = [r if isinstance(r, dict) else {"ok": r.ok, "ttft_s": r.ttft_s, "prompt_tokens": r.prompt_tokens,
                                              "output_tokens": r.output_tokens, "replica": ""} for r in results]
    after, cpu_after = prefilled_tokens(replicas), cpu_seconds(pids)
    done = [r for r in results if r["ok"]]
    prompt_tokens = sum(r["prompt_tokens"] for r in done)
    computed = sum(after[rid] - prefilled[rid] for rid in after)
    return {"plan": name, "workload": workload, "replicas": len(replicas), "num_requests": len(results),
            "completed": len(done), "duration_s": duration,
            "output_throughput": sum(r["output_tokens"] for r in done) / duration,
            "ttft_p50_ms": _ms([r["ttft_s"] for r in done], 0.5), "ttft_p95_ms": _ms([r["ttft_s"] for r in done], 0.95),
            "ttft_mean_ms": 1e3 * statistics.fmean([r["ttft_s"] for r in done]) if done else 0.0,
            "prefix_hit_rate": 1 - computed / prompt_tokens if prompt_tokens else 0.0,
            "requests_per_replica": dict(Counter(r["replica"] for r in done if r["replica"])),
            "prefilled_per_replica": {rid: int(after[rid] - prefilled[rid]) for rid in after},
            "cpu_s": {k: round(cpu_after.get(k, 0.0) - v, 2) for k, v in cpu.items()}}


def kv_budget(args, model: Path) -> int:
    """KV tokens per replica: --cache-systems system prompts plus every request in flight."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    count = lambda t: len(tok(t).input_ids)  # noqa: E731
    system, user = shared_workload(args, 0)[0]
    per_request = count(user) + args.output_len + 64  # + chat template, + a partly filled block
    shared = args.cache_systems * (count(system) + 16) + args.concurrency * per_request
    distinct = args.num_distinct * (count(text(random.Random(0), args.distinct_words)) + args.output_len + 32)
    return max(shared, distinct)


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="livecast-bench-scale-") as workdir:
        model = tiny_model(Path(workdir)) if args.model == "tiny" else resolve_model(args.model or None)
        kv_tokens = kv_budget(args, model)
        rows = run_plans(args, make_settings(model, kv_tokens, os.path.join(workdir, "data")))
    return {"model": str(model) if args.model != "tiny" else "tiny-random-llama", "kv_tokens_per_replica": kv_tokens,
            "cores": os.cpu_count(), "runs": rows}


def run_plans(args, settings) -> list[dict]:
    """Each plan's cluster in turn on one local Ray (started once: it takes seconds)."""
    import ray

    from livecast.services.scale.config import ScaleConfig
    from livecast.services.scale.launcher import Cluster
    from livecast.services.scale.registry import NAMESPACE

    rows = []
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, namespace=NAMESPACE, logging_level="WARNING",
             object_store_memory=256 << 20)
    try:
        for plan in args.plans.split(","):
            num, routing = plan.split(":")
            started = time.perf_counter()
            with Cluster(settings, ScaleConfig(replicas=int(num), routing=routing)) as cluster:
                print(f"{plan}: {num} replica(s) up in {time.perf_counter() - started:.0f}s", file=sys.stderr)
                # warm-up: every replica compiles its first steps before anything is timed
                asyncio.run(_warm(cluster.url, 4 * int(num)))
                for workload in ("distinct", "shared"):
                    if workload == "distinct" and routing != "prefix":
                        continue  # distinct prompts: routing only balances, the prefix plans cover it
                    rows.append(measure(cluster, plan, workload, args, args.seed))
                    print(f"  {workload}: {rows[-1]['completed']}/{rows[-1]['num_requests']} in "
                          f"{rows[-1]['duration_s']:.1f}s", file=sys.stderr)
    finally:
        ray.shutdown()
    return rows


async def _warm(url: str, num: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.gather(*(one_request(client, MODEL_NAME, f"warm up {i}", 2) for i in range(num)))


def verdict(runs: list[dict]) -> list[str]:
    """The sentences the figures support, for the table's footer and the JSON."""
    by = {(r["plan"], r["workload"]): r for r in runs}
    notes = []
    one, two = by.get(("1:prefix", "distinct")), by.get(("2:prefix", "distinct"))
    if one and two and one["output_throughput"]:
        gain = two["output_throughput"] / one["output_throughput"]
        notes.append(f"2 replicas vs 1: {gain:.2f}x output tok/s on {os.cpu_count()} cores" +
                     (" -- little gain: both replicas share the same cores (see cpu_s)" if gain < 1.5 else ""))
    prefix, rr = by.get(("2:prefix", "shared")), by.get(("2:round_robin", "shared"))
    if prefix and rr:
        notes.append(f"shared system prompts: prefix-cache hit rate {100 * prefix['prefix_hit_rate']:.0f}% with "
                     f"prefix routing vs {100 * rr['prefix_hit_rate']:.0f}% round-robin; TTFT p50 "
                     f"{prefix['ttft_p50_ms']:.0f} vs {rr['ttft_p50_ms']:.0f} ms")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random 2-layer Llama) or a model folder/.gguf ('' = SmolLM2)")
    parser.add_argument("--plans", default="1:prefix,2:prefix,2:round_robin", help="replicas:routing, comma separated")
    parser.add_argument("--num-distinct", type=int, default=16, help="distinct prompts, all in flight at once")
    parser.add_argument("--distinct-words", type=int, default=64)
    parser.add_argument("--num-systems", type=int, default=8, help="distinct system prompts")
    parser.add_argument("--per-system", type=int, default=16, help="requests per system prompt")
    parser.add_argument("--system-words", type=int, default=384)
    parser.add_argument("--user-words", type=int, default=16)
    parser.add_argument("--cache-systems", type=int, default=5, help="system prompts one replica's KV cache holds")
    parser.add_argument("--concurrency", type=int, default=4, help="shared-workload requests in flight")
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for plan in args.plans.split(","):
        num, _, routing = plan.partition(":")
        if not num.isdigit() or int(num) < 1 or routing not in POLICIES:
            parser.error(f"--plans: {plan!r} is not REPLICAS:{'|'.join(POLICIES)}")
    result = run(args)
    result["notes"] = verdict(result["runs"])
    headers = ["plan", "workload", "done", "out tok/s", "TTFT p50/p95 ms", "prefix hits", "prefilled per replica",
               "CPU s per replica / ingress+client / ray"]
    rows = [[r["plan"], r["workload"], f"{r['completed']}/{r['num_requests']}", r["output_throughput"],
             f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f}", f"{100 * r['prefix_hit_rate']:.0f}%",
             " ".join(str(v) for v in r["prefilled_per_replica"].values()),
             " ".join(f"{v:.1f}" for k, v in r["cpu_s"].items() if k not in ("ingress+client", "ray")) +
             f" / {r['cpu_s']['ingress+client']:.1f} / {r['cpu_s']['ray']:.1f}"] for r in result["runs"]]
    report("scale", headers, rows, {"config": vars(args), **result}, args.json)
    print("\n".join(result["notes"]))
    return 0 if all(r["completed"] == r["num_requests"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
