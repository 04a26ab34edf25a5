"""Auto-CoT (Zhang et al. 2022): demos from unlabeled questions, one per question cluster.

1. embed every question (Sentence-BERT; here all-MiniLM-L6-v2 through `engine.embedder`)
2. k-means into k clusters (scikit-learn, fixed seed)
3. per cluster, order questions by distance to the centre and keep the nearest
   `candidates_per_cluster` as candidates
4. generate a Zero-Shot-CoT rationale for every candidate in ONE batched call, then Kojima's
   stage-2 answer for every candidate in a second batched call
5. per cluster, keep the first candidate (nearest first) that passes the heuristics of the
   reference code: question <= 60 words, rationale <= 5 steps (non-blank lines) ending with a
   full stop, an answer extracted, and for numbers the answer appearing in the rationale.
   Candidates before it are recorded with the reason they were rejected.

Generation is injected, `generate_many(prompts, params) -> texts` (the offline engine's batched
`LLM.generate` in `engine_generate_many`), and so are embeddings, `embed(texts) -> (n, dim)`.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from livecast.engine.sampling_params import SamplingParams
from livecast.services.llm.cot.answers import check_format, extract_answer, find_numbers, split_rationale_answer
from livecast.services.llm.cot.demos import Demo, DemoSet
from livecast.services.llm.cot.prompts import (ANSWER_MAX_TOKENS, ANSWER_STOP, RATIONALE_STOP, ZERO_SHOT_TRIGGER,
                                         answer_prompt, build_prompt)
from livecast.services.llm.cot.spec import CotSpec

EmbedFn = Callable[[list[str]], Any]
GenerateMany = Callable[[list[str], SamplingParams], list[str]]


@dataclass(slots=True)
class AutoCotConfig:
    num_clusters: int = 8
    seed: int = 0
    candidates_per_cluster: int = 8  # 0: every question of the cluster is a candidate
    max_question_words: int = 60
    max_rationale_steps: int = 5
    answer_in_rationale: bool = True  # the arithmetic heuristic (number answers only)
    answer_format: str = "number"
    max_tokens: int = 128  # rationale budget per candidate

    def __post_init__(self) -> None:
        for name in ("num_clusters", "max_question_words", "max_rationale_steps", "max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.candidates_per_cluster < 0:
            raise ValueError(f"candidates_per_cluster must be >= 0, got {self.candidates_per_cluster}")
        check_format(self.answer_format)

    def heuristics(self) -> dict:
        return {"max_question_words": self.max_question_words, "max_rationale_steps": self.max_rationale_steps,
                "answer_in_rationale": self.answer_in_rationale and self.answer_format == "number"}


def cluster(embeddings: np.ndarray, num_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster label per row, distance of each row to its own centre)."""
    from sklearn.cluster import KMeans

    if num_clusters > len(embeddings):
        raise ValueError(f"{num_clusters} clusters need at least {num_clusters} questions, got {len(embeddings)}")
    kmeans = KMeans(n_clusters=num_clusters, random_state=seed, n_init=10).fit(embeddings)
    distances = kmeans.transform(embeddings)[np.arange(len(embeddings)), kmeans.labels_]
    return kmeans.labels_.astype(int), distances


def candidates_by_cluster(labels: np.ndarray, distances: np.ndarray, num_clusters: int,
                          per_cluster: int) -> list[list[int]]:
    """Question indices per cluster, nearest the centre first (index breaks distance ties)."""
    pools = []
    for c in range(num_clusters):
        members = sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (float(distances[i]), i))
        pools.append(members[:per_cluster] if per_cluster else members)
    return pools


def rationale_steps(rationale: str) -> int:
    return sum(1 for line in rationale.split("\n") if line.strip())


def rejection_reason(question: str, rationale: str, answer: str | None, config: AutoCotConfig) -> str | None:
    """Why a candidate fails the heuristics, or None when it passes."""
    words = len(question.split())
    if words > config.max_question_words:
        return f"question has {words} words (> {config.max_question_words})"
    if not rationale:
        return "empty rationale"
    steps = rationale_steps(rationale)
    if steps > config.max_rationale_steps:
        return f"rationale has {steps} steps (> {config.max_rationale_steps})"
    if not rationale.endswith("."):
        return "rationale does not end with a full stop (cut off?)"
    if answer is None:
        return "no answer extracted"
    if config.answer_in_rationale and config.answer_format == "number" and \
            not any(abs(float(n) - float(answer)) < 1e-6 for n in find_numbers(rationale)):
        return f"predicted answer {answer} does not appear in the rationale"
    return None


@dataclass(slots=True)
class AutoCotBuild:
    demo_set: DemoSet
    records: list[dict]  # per demo: cluster, size, distance, rejected candidates
    timings_s: dict[str, float] = field(default_factory=dict)


def build_demos(questions: list[str], embed: EmbedFn, generate_many: GenerateMany, config: AutoCotConfig,
                name: str = "auto", progress: bool = True) -> AutoCotBuild:
    """Steps 1–5 of the module docstring; clusters whose candidates all fail yield no demo."""
    if not questions:
        raise ValueError("Auto-CoT needs at least one question")
    timings, start = {}, time.perf_counter()
    spec = CotSpec("zero_shot", answer_format=config.answer_format)
    with tqdm(total=5, desc="auto-cot", unit="stage", disable=not progress) as bar:
        bar.set_postfix_str("embedding")
        embeddings = np.asarray(embed(questions), dtype=np.float64)  # (num_questions, dim)
        timings["embed"] = _lap(bar, "clustering", start)
        labels, distances = cluster(embeddings, config.num_clusters, config.seed)
        pools = candidates_by_cluster(labels, distances, config.num_clusters, config.candidates_per_cluster)
        pool = [i for members in pools for i in members]
        timings["cluster"] = _lap(bar, f"rationales for {len(pool)} candidates", start, timings)
        prompts = [build_prompt(spec, questions[i], []) for i in pool]
        stage1 = generate_many(prompts, SamplingParams(temperature=0.0, max_tokens=config.max_tokens,
                                                       stop=RATIONALE_STOP))
        timings["rationales"] = _lap(bar, "answers", start, timings)
        stage2 = generate_many([answer_prompt(p, z, config.answer_format) for p, z in zip(prompts, stage1)],
                               SamplingParams(temperature=0.0, max_tokens=ANSWER_MAX_TOKENS, stop=ANSWER_STOP))
        timings["answers"] = _lap(bar, "selecting", start, timings)
        generated = {i: (z.strip(), extract_answer(a, config.answer_format, "first"))
                     for i, z, a in zip(pool, stage1, stage2)}
        demos, records = _select(questions, pools, distances, generated, labels, config)
        timings["select"] = _lap(bar, f"{len(demos)} demos", start, timings)
    if not demos:
        reasons = Counter(re.sub(r"\d+ (words|steps)", r"N \1", r["reason"].split(" does not appear")[0])
                          for record in records for r in record["rejected"])
        tally = "; ".join(f"{count} × {reason}" for reason, count in reasons.most_common())
        raise ValueError(f"no candidate in any of the {config.num_clusters} clusters passed the heuristics "
                         f"{config.heuristics()}: {len(pool)} candidates rejected ({tally}); try more "
                         "candidates or looser limits")
    extra = {"build": {"num_questions": len(questions), "num_clusters": config.num_clusters, "seed": config.seed,
                       "candidates_per_cluster": config.candidates_per_cluster, "num_candidates": len(pool),
                       "heuristics": config.heuristics(),
                       "clusters_without_demo": [r for r in records if r.get("demo") is False],
                       "timings_s": {k: round(v, 3) for k, v in timings.items()}}}
    return AutoCotBuild(DemoSet(name, demos, config.answer_format, "auto-cot", extra),
                        [r for r in records if r.get("demo") is not False], timings)


def _select(questions, pools, distances, generated, labels, config):
    demos, records = [], []
    for c, members in enumerate(pools):
        rejected = []
        for i in members:
            rationale, answer = generated[i]
            kept = split_rationale_answer(rationale, config.answer_format)[0]  # drop a trailing "The answer is"
            reason = rejection_reason(questions[i], kept, answer, config)
            if reason is None:
                demos.append(Demo(questions[i], f"{ZERO_SHOT_TRIGGER} {kept}", answer))
                records.append({"cluster": c, "cluster_size": int((labels == c).sum()),
                                "distance": round(float(distances[i]), 4), "rejected": rejected})
                break
            rejected.append({"question": questions[i], "rationale": rationale, "answer": answer, "reason": reason})
        else:
            records.append({"cluster": c, "cluster_size": int((labels == c).sum()), "demo": False,
                            "rejected": rejected})
    return demos, records


def _lap(bar, next_stage: str, start: float, timings: dict | None = None) -> float:
    bar.update(1)
    bar.set_postfix_str(next_stage)
    return time.perf_counter() - start - sum((timings or {}).values())


def engine_generate_many(llm, progress: bool = True) -> GenerateMany:
    """Batched greedy generation on the offline engine: all prompts in one `LLM.generate`."""

    def generate_many(prompts: list[str], params: SamplingParams) -> list[str]:
        return [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=progress)]

    return generate_many


def minilm_embed() -> EmbedFn:
    """The packaged all-MiniLM-L6-v2 (384-d), loaded once."""
    from livecast.engine.embedder import Embedder

    embedder = Embedder.from_pretrained(None)
    return lambda texts: embedder.encode(texts).numpy()
