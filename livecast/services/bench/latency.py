"""One streamed /v1/completions (or chat) request, timed (TTFT, inter-token gaps, end to end), and the
latency summary of many; the words synthetic prompts are drawn from. Shared by the serving, streams
and scale benches."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

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
    text: str = ""
    timings: dict = field(default_factory=dict)  # llama-server's last `timings` (draft_n, draft_n_accepted)


async def one_request(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    return await stream_timed(client, "/v1/completions", body)


async def one_chat_request(client: httpx.AsyncClient, model: str, messages: list[dict], max_tokens: int,
                           **extra) -> Result:
    """A greedy streamed chat completion that ends at EOS or `max_tokens` (`extra`: more body fields)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    return await stream_timed(client, "/v1/chat/completions", body)


def _delta_text(choice: dict) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def stream_timed(client: httpx.AsyncClient, path: str, body: dict) -> Result:
    """POST a streaming completion (text or chat) and time its chunks; llama-server's `timings`
    object (its draft counts) is kept when the server sends one."""
    result = Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as r:
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
                if chunk.get("timings"):
                    result.timings = chunk["timings"]
                text = _delta_text(chunk["choices"][0]) if chunk.get("choices") else ""
                if text:
                    result.text += text
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
