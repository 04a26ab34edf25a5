"""`livecast cot build`: Auto-CoT demos from a questions file, written in the demo-set format.

    livecast cot build --questions FILE.jsonl --out DEMOS.json [--clusters 8] [--seed 0] [--model M]

The output loads as a named demo set (`livecast serve --cot-demos auto=DEMOS.json`) and as
`livecast bench cot --auto-demos DEMOS.json`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from livecast.services.llm.cot.offline.autocot import AutoCotConfig, build_demos, engine_generate_many, minilm_embed
from livecast.services.llm.cot.offline.dataset import load_questions
from livecast.services.llm.cot.demos import save_demo_set

DEFAULTS = AutoCotConfig()


def default_dtype() -> str:
    import torch

    return "auto" if torch.cuda.is_available() else "float32"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecast cot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build Auto-CoT demos from unlabeled questions")
    build.add_argument("--questions", required=True, help="JSONL, one {\"question\": …} a line (GSM8K works)")
    build.add_argument("--out", required=True, help="demo-set JSON to write")
    build.add_argument("--clusters", type=int, default=DEFAULTS.num_clusters, help="k of k-means (demos at most)")
    build.add_argument("--seed", type=int, default=DEFAULTS.seed, help="k-means seed")
    build.add_argument("--model", default=None, help="LLM folder or .gguf (default: SmolLM2-135M-Instruct)")
    build.add_argument("--dtype", default=None, help="default: float32 on a CPU (twice bf16's speed there), "
                       "else the engine's auto")
    build.add_argument("--name", default=None, help="demo-set name (default: the output file's stem)")
    build.add_argument("--candidates", type=int, default=DEFAULTS.candidates_per_cluster,
                       help="candidates per cluster, nearest the centre first (0: all)")
    build.add_argument("--max-question-words", type=int, default=DEFAULTS.max_question_words)
    build.add_argument("--max-steps", type=int, default=DEFAULTS.max_rationale_steps,
                       help="most non-blank rationale lines")
    build.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens, help="rationale token budget")
    build.add_argument("--answer-format", default=DEFAULTS.answer_format, choices=["number", "choice", "text"])
    build.add_argument("--no-answer-check", action="store_true",
                       help="skip the arithmetic heuristic (the answer must appear in the rationale)")
    build.add_argument("--limit", type=int, default=None, help="use the first N questions")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "cot":  # `livecast cot …` passes its own name first
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = AutoCotConfig(args.clusters, args.seed, args.candidates, args.max_question_words, args.max_steps,
                               not args.no_answer_check, args.answer_format, args.max_tokens)
        questions = [p.question for p in load_questions(args.questions, limit=args.limit)]
        if config.num_clusters > len(questions):
            raise ValueError(f"--clusters {config.num_clusters} exceeds the number of questions ({len(questions)})")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from livecast.engine.llm import LLM

    start = time.perf_counter()
    try:
        llm = LLM(model=args.model, dtype=args.dtype or default_dtype())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    embed = minilm_embed()
    load_s = time.perf_counter() - start
    name = args.name or Path(args.out).stem
    try:
        built = build_demos(questions, embed, engine_generate_many(llm, not args.quiet), config, name,
                            progress=not args.quiet)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    built.demo_set.extra["build"].update(model=llm.engine.model_name, load_s=round(load_s, 3),
                                         total_s=round(time.perf_counter() - start, 3))
    save_demo_set(built.demo_set, args.out, built.records)
    rejected = sum(len(r["rejected"]) for r in built.records) + \
        sum(len(r["rejected"]) for r in built.demo_set.extra["build"]["clusters_without_demo"])
    print(f"wrote {len(built.demo_set.demos)} demos from {len(questions)} questions in {config.num_clusters} "
          f"clusters to {args.out} ({rejected} candidates rejected; build {sum(built.timings_s.values()):.1f} s, "
          f"model load {load_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
