"""`python -m livecast.services.bench.speculative`: one stream on a quoting prompt (the reply
copies text from the prompt, where prompt lookup drafts well), speculation off and on, with the
deterministic numerics off and on: tokens/s, acceptance, mean accepted length, and whether the
greedy tokens matched the run without speculation."""
from __future__ import annotations

import argparse
import json
import time

PASSAGE = ("The engine keeps a block table for every sequence. Each block holds the keys and values of "
           "sixteen tokens, and blocks are shared between sequences that start with the same prompt. When "
           "memory runs out, the newest request is preempted: its blocks move to CPU swap space while that "
           "lasts, and are otherwise freed and recomputed later.")
PROMPT = f"Repeat the following text exactly, word for word.\n\n{PASSAGE}"


def run(model: str | None, speculative: str | None, deterministic: bool, max_tokens: int, k: int) -> dict:
    from livecast.engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=model, speculative=speculative, num_speculative_tokens=k,
                                    deterministic=deterministic))
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    engine.add_request("warmup", ids[:16], SamplingParams(temperature=0, max_tokens=4))
    while engine.has_unfinished_requests():
        engine.step()
    base = engine.stats()
    engine.add_request("quote", ids, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
    tokens, steps, first_at = [], 0, None
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            tokens = out.outputs[0].token_ids
            if first_at is None and tokens:
                first_at = time.perf_counter()
    end = time.perf_counter()
    s = engine.stats()
    drafts = s.spec_draft_tokens_total - base.spec_draft_tokens_total
    accepted = s.spec_accepted_tokens_total - base.spec_accepted_tokens_total
    verifies = s.spec_verify_steps_total - base.spec_verify_steps_total
    return {"speculative": speculative or "off", "deterministic": deterministic, "tokens": len(tokens),
            "decode_steps": steps - 1, "decode_tok_s": (len(tokens) - 1) / max(end - first_at, 1e-9),
            "acceptance": accepted / drafts if drafts else None,
            "mean_accepted_length": 1 + accepted / verifies if verifies else None,
            "token_ids": tokens, "text": engine.tokenizer.decode(tokens[:60])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench speculative", description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--speculative", default="ngram")
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for deterministic in (False, True):
        off = run(args.model, None, deterministic, args.max_tokens, args.num_speculative_tokens)
        on = run(args.model, args.speculative, deterministic, args.max_tokens, args.num_speculative_tokens)
        on["same_tokens"] = on["token_ids"] == off["token_ids"]
        on["speedup"] = on["decode_tok_s"] / off["decode_tok_s"]
        rows += [off, on]
    for row in rows:
        row.pop("token_ids")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"reply starts: {rows[0]['text']!r}")
    print(f"{'numerics':<14}{'spec':<8}{'decode tok/s':>13}{'steps':>7}{'accept':>8}{'mean len':>9}{'same':>6}{'x':>6}")
    for r in rows:
        acc = f"{100 * r['acceptance']:.0f}%" if r["acceptance"] is not None else "-"
        mal = f"{r['mean_accepted_length']:.2f}" if r["mean_accepted_length"] is not None else "-"
        print(f"{'deterministic' if r['deterministic'] else 'default':<14}{r['speculative']:<8}"
              f"{r['decode_tok_s']:>13.1f}{r['decode_steps']:>7}{acc:>8}{mal:>9}"
              f"{str(r.get('same_tokens', '')):>6}{r.get('speedup', 1.0):>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
