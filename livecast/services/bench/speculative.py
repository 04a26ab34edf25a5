"""`python -m livecast.services.bench.speculative`: speculation off and with each proposer (ngram,
suffix, and draft when `--draft-model PATH` is given), one engine each, on two single-stream workloads:

- quote: a reply that copies text from its prompt, where prompt lookup drafts well;
- json: requests one after another that answer in the same JSON shape (agents, tool calls), where
  the suffix proposer's tree over earlier outputs drafts from the second request on (the first is
  reported apart).

Each row: decode tokens/s, decode steps, acceptance, mean accepted length (tokens per verification
step), and whether the greedy tokens matched the run without speculation.
"""
from __future__ import annotations

import argparse
import json
import time

PASSAGE = ("The engine keeps a block table for every sequence. Each block holds the keys and values of "
           "sixteen tokens, and blocks are shared between sequences that start with the same prompt. When "
           "memory runs out, the newest request is preempted: its blocks move to CPU swap space while that "
           "lasts, and are otherwise freed and recomputed later.")
PROMPT = f"Repeat the following text exactly, word for word.\n\n{PASSAGE}"
JSON_QUESTION = ("Answer with one JSON object only, with the keys \"city\", \"country\", \"continent\" and "
                 "\"is_capital\" (true or false), for the city of {city}.")
JSON_EXAMPLE = '{"city": "Rome", "country": "Italy", "continent": "Europe", "is_capital": true}'
CITIES = ["Paris", "Madrid", "Lyon", "Berlin", "Tokyo", "Milan", "Toronto", "Cairo"]


def _chat_ids(engine, text: str, example: tuple[str, str] | None = None) -> list[int]:
    messages = [{"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]}] \
        if example else []
    messages.append({"role": "user", "content": text})
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _one(engine, request_id: str, ids: list[int], max_tokens: int) -> dict:
    from livecast.engine import SamplingParams

    base = engine.stats()
    engine.add_request(request_id, ids, SamplingParams(temperature=0, max_tokens=max_tokens))
    tokens, steps, first_at = [], 0, None
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            tokens = out.outputs[0].token_ids
            if first_at is None and tokens:
                first_at = time.perf_counter()
    end = time.perf_counter()
    s = engine.stats()
    return {"tokens": tokens, "decode_steps": steps - 1, "decode_s": end - first_at,
            "drafts": s.spec_draft_tokens_total - base.spec_draft_tokens_total,
            "accepted": s.spec_accepted_tokens_total - base.spec_accepted_tokens_total,
            "verifies": s.spec_verify_steps_total - base.spec_verify_steps_total}


def _row(workload: str, speculative: str | None, deterministic: bool, runs: list[dict], text: str) -> dict:
    drafts, accepted = sum(r["drafts"] for r in runs), sum(r["accepted"] for r in runs)
    verifies = sum(r["verifies"] for r in runs)
    decode_tokens = sum(len(r["tokens"]) - 1 for r in runs)
    return {"workload": workload, "speculative": speculative or "off", "deterministic": deterministic,
            "requests": len(runs), "tokens": sum(len(r["tokens"]) for r in runs),
            "decode_steps": sum(r["decode_steps"] for r in runs),
            "decode_tok_s": decode_tokens / max(sum(r["decode_s"] for r in runs), 1e-9),
            "acceptance": accepted / drafts if drafts else None,
            "mean_accepted_length": 1 + accepted / verifies if verifies else None,
            "token_ids": [r["tokens"] for r in runs], "text": text}


def run(model: str | None, speculative: str | None, deterministic: bool, max_tokens: int, k: int,
        num_json: int, draft_model: str | None = None) -> list[dict]:
    """A fresh engine per workload (no tree carried over): the quote, then `num_json` JSON answers
    in a row (the first one reported apart). `draft_model`: the draft proposer's model."""
    from livecast.engine import EngineConfig, LLMEngine, SamplingParams

    rows = []
    for workload in ("quote", "json") if num_json else ("quote",):
        engine = LLMEngine(EngineConfig(model=model, speculative=speculative, num_speculative_tokens=k,
                                        deterministic=deterministic,
                                        draft_model=draft_model if speculative == "draft" else None))
        warmup = _chat_ids(engine, PROMPT)[:16]
        engine.add_request("warmup", warmup, SamplingParams(temperature=0, max_tokens=4))
        while engine.has_unfinished_requests():
            engine.step()
        decode = engine.tokenizer.decode
        if workload == "quote":
            quote = _one(engine, "quote", _chat_ids(engine, PROMPT), max_tokens)
            rows.append(_row("quote", speculative, deterministic, [quote], decode(quote["tokens"][:60])))
            continue
        example = (JSON_QUESTION.format(city="Rome"), JSON_EXAMPLE)  # one shot: a small model keeps the shape
        prompts = [_chat_ids(engine, JSON_QUESTION.format(city=CITIES[i % len(CITIES)]), example)
                   for i in range(num_json)]
        answers = [_one(engine, f"json{i}", ids, max_tokens) for i, ids in enumerate(prompts)]
        rows.append(_row("json first", speculative, deterministic, answers[:1], decode(answers[0]["tokens"])))
        if len(answers) > 1:
            rows.append(_row("json rest", speculative, deterministic, answers[1:], decode(answers[-1]["tokens"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench speculative", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--speculative", default="ngram,suffix", help="proposers to compare with off, comma-separated")
    parser.add_argument("--draft-model", default=None,
                        help="a draft model (HF folder or .gguf with the target's tokenizer): adds the draft proposer")
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--num-json", type=int, default=4, help="JSON answers in a row (0: the quote only)")
    parser.add_argument("--deterministic", choices=["off", "on", "both"], default="off")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    methods = [None] + [m for m in args.speculative.split(",") if m]
    if args.draft_model and "draft" not in methods:
        methods.append("draft")
    rows = []
    for deterministic in {"off": (False,), "on": (True,), "both": (False, True)}[args.deterministic]:
        by_method = [run(args.model, m, deterministic, args.max_tokens, args.num_speculative_tokens, args.num_json,
                         args.draft_model) for m in methods]
        for off, *ons in zip(*by_method):
            for on in ons:
                on["same_tokens"] = on["token_ids"] == off["token_ids"]
                on["speedup"] = on["decode_tok_s"] / off["decode_tok_s"]
            rows += [off, *ons]
    for row in rows:
        row.pop("token_ids")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        if row["speculative"] == "off" and not row["deterministic"]:
            print(f"{row['workload']} reply: {row['text'][:120]!r}")
    print(f"{'workload':<12}{'numerics':<14}{'spec':<8}{'decode tok/s':>13}{'steps':>7}{'accept':>8}"
          f"{'mean len':>9}{'same':>6}{'x':>6}")
    for r in rows:
        acc = f"{100 * r['acceptance']:.0f}%" if r["acceptance"] is not None else "-"
        mal = f"{r['mean_accepted_length']:.2f}" if r["mean_accepted_length"] is not None else "-"
        print(f"{r['workload']:<12}{'deterministic' if r['deterministic'] else 'default':<14}{r['speculative']:<8}"
              f"{r['decode_tok_s']:>13.1f}{r['decode_steps']:>7}{acc:>8}{mal:>9}"
              f"{str(r.get('same_tokens', '')):>6}{r.get('speedup', 1.0):>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
