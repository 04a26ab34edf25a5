"""`livecast bench cot`: accuracy, output tokens and wall time of each CoT mode on one model.

    livecast bench cot --dataset FILE.jsonl [--modes none,zero_shot,few_shot,auto,self_consistency]
                       [--model M] [--limit N] [--json PATH]

Every mode answers the same questions through `run_cot` (the code path of the request-level
`cot` field), all questions in flight together so the engine batches them. `none` asks for the
answer directly; few_shot uses the hand-written demos (`--demos`); auto uses an Auto-CoT demo
file (`--auto-demos`) or builds one from the dataset's own questions first, as Auto-CoT does
(its build time is reported apart). Self-consistency also reports the KV blocks its N chains
hold on one prompt against N separate requests, read from the engine's block manager.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from livecast.services.llm.cot.answers import answers_match, normalize_gold
from livecast.services.llm.cot.offline.dataset import SHIPPED_FEWSHOT, Problem, load_questions
from livecast.services.llm.cot.demos import Demo, load_demo_set
from livecast.services.llm.cot.runner import EngineDriver, run_cot
from livecast.services.llm.cot.spec import MAX_CHAINS, CotSpec
from livecast.services.bench.report import report

MODES = ("none", "zero_shot", "few_shot", "auto", "self_consistency")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast bench cot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="JSONL of {question, answer} (GSM8K '#### N' works)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    parser.add_argument("--model", default=None, help="LLM folder or .gguf (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default=None, help="default: float32 on a CPU, else auto")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--demos", default=str(SHIPPED_FEWSHOT), help="few-shot demo file")
    parser.add_argument("--auto-demos", default=None, help="Auto-CoT demo file (default: build one)")
    parser.add_argument("--clusters", type=int, default=8, help="k when building Auto-CoT demos")
    parser.add_argument("--n", type=int, default=5, help="self-consistency chains")
    parser.add_argument("--temperature", type=float, default=0.7, help="self-consistency sampling temperature")
    parser.add_argument("--max-tokens", type=int, default=128, help="rationale token budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-in-flight", type=int, default=32, help="questions in flight at once")
    parser.add_argument("--json", default=None)
    return parser


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[Problem]]:
    args = build_parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes: unknown mode(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(MODES)}")
    if not 1 <= args.n <= MAX_CHAINS:
        raise ValueError(f"--n must be in [1, {MAX_CHAINS}], got {args.n}")
    if args.n > 1 and args.temperature <= 0:
        raise ValueError("--temperature must be > 0 for self-consistency with --n > 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    problems = load_questions(args.dataset, require_answers=True, limit=args.limit)
    return args, modes, problems


async def run_mode(driver: EngineDriver, mode: str, problems: list[Problem], demos: list[Demo],
                   args: argparse.Namespace) -> list[dict]:
    from livecast.engine.sampling_params import SamplingParams

    shots = demos if mode in ("few_shot", "auto") else []
    spec = CotSpec(mode, shots or None, args.n if mode == "self_consistency" else None)

    def params(i: int):
        if mode == "self_consistency":
            return SamplingParams(temperature=args.temperature, seed=args.seed + i, max_tokens=args.max_tokens)
        return SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    results = await driver.run([run_cot(driver.generate, spec, p.question, shots, params(i))
                                for i, p in enumerate(problems)], args.max_in_flight)
    records = []
    for i, (problem, result) in enumerate(zip(problems, results)):
        gold = normalize_gold(problem.answer, "number")
        records.append({"mode": mode, "index": i, "question": problem.question, "gold": gold,
                        "answer": result.answer, "correct": answers_match(result.answer, gold, "number"),
                        "rationale": result.rationale, "output_tokens": result.num_output_tokens,
                        **({"votes": result.votes} if result.votes else {})})
    return records


def auto_demos(llm, problems: list[Problem], args) -> tuple[list[Demo], float]:
    if args.auto_demos:
        return load_demo_set(args.auto_demos).demos, 0.0
    from livecast.services.llm.cot.offline.autocot import AutoCotConfig, build_demos, engine_generate_many, minilm_embed

    start = time.perf_counter()
    config = AutoCotConfig(num_clusters=min(args.clusters, len(problems)), seed=args.seed, max_tokens=args.max_tokens)
    built = build_demos([p.question for p in problems], minilm_embed(), engine_generate_many(llm, False),
                        config, progress=False)
    return built.demo_set.demos, time.perf_counter() - start


def main(argv: list[str]) -> int:
    try:
        args, modes, problems = _parse(argv)
        fewshot = load_demo_set(args.demos).demos if "few_shot" in modes else []
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from livecast.engine.llm import LLM
    from livecast.services.llm.cot.offline.cli import default_dtype
    from livecast.services.llm.cot.offline.selfconsistency import measure_kv_sharing

    llm = LLM(model=args.model, dtype=args.dtype or default_dtype())
    engine, rows, per_mode, records, extra = llm.engine, [], {}, [], {}
    demos_by_mode = {"few_shot": fewshot}
    if "auto" in modes:  # before any mode runs, so a build that finds no demo fails fast
        try:
            demos_by_mode["auto"], extra["auto_build_s"] = auto_demos(llm, problems, args)
        except ValueError as exc:
            print(f"error: auto: {exc}", file=sys.stderr)
            return 1
        extra["auto_num_demos"] = len(demos_by_mode["auto"])
    for mode in modes:
        demos = demos_by_mode.get(mode, [])
        bm = engine.block_manager
        queries, hits = bm.prefix_queries, bm.prefix_hits
        start = time.perf_counter()
        mode_records = asyncio.run(run_mode(EngineDriver(engine), mode, problems, demos, args))
        wall_s = time.perf_counter() - start
        correct = sum(r["correct"] for r in mode_records)
        tokens = sum(r["output_tokens"] for r in mode_records) / len(mode_records)
        hit_pct = 100.0 * (bm.prefix_hits - hits) / max(bm.prefix_queries - queries, 1)
        per_mode[mode] = {"accuracy": correct / len(mode_records), "correct": correct, "total": len(mode_records),
                          "mean_output_tokens": tokens, "wall_s": wall_s, "prefix_cache_hit_pct": hit_pct}
        rows.append([mode, f"{100 * correct / len(mode_records):.1f}%", f"{correct}/{len(mode_records)}",
                     tokens, wall_s, hit_pct])
        records.extend(mode_records)
    if "self_consistency" in modes and args.n > 1:
        from livecast.engine.sampling_params import SamplingParams
        from livecast.services.llm.cot.prompts import build_prompt

        prompt = build_prompt(CotSpec("self_consistency", n=args.n), problems[0].question, [])
        _, kv = measure_kv_sharing(engine, prompt, SamplingParams(n=args.n, temperature=args.temperature,
                                                                  seed=args.seed, max_tokens=args.max_tokens,
                                                                  ignore_eos=True))
        extra["self_consistency_kv"] = kv.as_dict()
    result = {"model": engine.model_name, "dataset": args.dataset, "num_questions": len(problems),
              "n": args.n, "temperature": args.temperature, "max_tokens": args.max_tokens,
              "modes": per_mode, **extra, "records": records}
    report("cot", ["mode", "accuracy", "correct", "mean output tokens", "wall s", "prefix hit %"], rows,
           result, args.json)
    if "self_consistency_kv" in extra:
        kv = extra["self_consistency_kv"]
        print(f"self-consistency KV, n={kv['num_chains']} chains of {args.max_tokens} tokens on a "
              f"{kv['prompt_tokens']}-token prompt: {kv['shared_blocks']} blocks shared vs "
              f"{kv['separate_blocks']} as separate requests ({kv['saved_pct']:.1f}% saved)")
    if "auto_build_s" in extra:
        print(f"Auto-CoT demos: {extra['auto_num_demos']} (built in {extra['auto_build_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
