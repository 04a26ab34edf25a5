"""Auto-CoT clustering and demo selection on a fixed question set with a fake embedder and generator."""
import re

import numpy as np
import pytest

from livecast.services.llm.cot.offline.autocot import (AutoCotConfig, build_demos, candidates_by_cluster, cluster,
                                                       rejection_reason)
from livecast.services.llm.cot.demos import load_demo_set, save_demo_set

LONG = "Bus " + " ".join(["word"] * 60) + " how many people ride the bus?"
# three topics of four questions; the offsets put question 2 nearest its centre, then 1, 0, 3
TOPICS = {
    "apples": ["Apple 0?", "Apple 1?", "Apple 2?", "Apple 3?"],
    "bus": ["Bus 0?", LONG, "Bus 2?", "Bus 3?"],
    "money": ["Money 0?", "Money 1?", "Money 2?", "Money 3?"],
}
QUESTIONS = [q for qs in TOPICS.values() for q in qs]
OFFSETS = [0.0, 0.1, 0.3, 1.0]
# per question: (stage-1 rationale, stage-2 output)
GENERATED = {
    "Apple 2?": ("1 + 1 = 2.\nThen 2.\nThen 2.\nThen 2.\nThen 2.\nThen 2.", " 2."),  # 6 steps
    "Apple 1?": ("3 + 4 = 7. The answer is 7.", " 7."),  # passes; "The answer is" is dropped
    "Bus 2?": ("3 + 4 = 7.", " 9."),  # 9 is not in the rationale
    LONG: ("2 + 2 = 4.", " 4."),  # question too long
    "Bus 0?": ("10 - 4 = 6 people.", " 6."),  # passes
    "Money 2?": ("It costs 5 and then", " 5."),  # cut off
    "Money 1?": ("Nothing to add.", " none."),  # no answer
    "Money 0?": ("a\nb\nc\nd\ne\nf 3.", " 3."),  # 6 steps
    "Money 3?": ("5 - 1 = 4.", " 40."),  # answer missing
}


def fake_embed(texts):
    rows = []
    for text in texts:
        topic = next(i for i, qs in enumerate(TOPICS.values()) if text in qs)
        row = np.zeros(4)
        row[topic] = 10.0
        row[3] = OFFSETS[list(TOPICS.values())[topic].index(text)]
        rows.append(row)
    return np.stack(rows)


class FakeGenerator:
    def __init__(self):
        self.calls = []

    def __call__(self, prompts, params):
        self.calls.append((list(prompts), params))
        outputs = []
        for prompt in prompts:
            question = re.match(r"Q: (.*?)\nA:", prompt, re.S).group(1)
            rationale, answer = GENERATED.get(question, ("1 + 1 = 2.", " 2."))
            outputs.append(answer if prompt.endswith("(arabic numerals) is") else " " + rationale)
        return outputs


def test_cluster_and_candidate_order():
    labels, distances = cluster(fake_embed(QUESTIONS), 3, seed=0)
    assert len(set(labels[:4])) == len(set(labels[4:8])) == len(set(labels[8:])) == 1
    assert len(set(labels.tolist())) == 3
    pools = candidates_by_cluster(labels, distances, 3, per_cluster=0)
    apples = next(p for p in pools if 0 in p)
    assert apples == [2, 1, 0, 3]
    assert all(len(p) == 2 for p in candidates_by_cluster(labels, distances, 3, per_cluster=2))
    with pytest.raises(ValueError, match="4 clusters need at least 4 questions, got 3"):
        cluster(fake_embed(QUESTIONS[:3]), 4, seed=0)


def test_demo_selection(tmp_path):
    generate = FakeGenerator()
    built = build_demos(QUESTIONS, fake_embed, generate, AutoCotConfig(num_clusters=3), progress=False)
    # one batched call for every candidate's rationale, one for every stage-2 answer
    assert len(generate.calls) == 2
    assert sorted(re.match(r"Q: (.*?)\n", p, re.S).group(1) for p in generate.calls[0][0]) == sorted(QUESTIONS)
    assert generate.calls[0][1].max_tokens == 128 and generate.calls[1][1].max_tokens == 16

    demos = built.demo_set.demos  # in cluster order; k-means numbers clusters arbitrarily
    by_question = {d.question: (d, r) for d, r in zip(demos, built.records)}
    assert sorted(by_question) == ["Apple 1?", "Bus 0?"]  # money yields none; one per cluster at most
    apple, apples = by_question["Apple 1?"]
    assert apple.rationale == "Let's think step by step. 3 + 4 = 7." and apple.answer == "7"
    assert len({r["cluster"] for r in built.records}) == 2
    config = AutoCotConfig()
    for demo in demos:
        assert rejection_reason(demo.question, demo.rationale.removeprefix("Let's think step by step. "),
                                demo.answer, config) is None
    bus = by_question["Bus 0?"][1]
    assert [r["reason"] for r in apples["rejected"]] == ["rationale has 6 steps (> 5)"]
    assert [r["reason"] for r in bus["rejected"]] == ["predicted answer 9 does not appear in the rationale",
                                                      "question has 67 words (> 60)"]
    missing = built.demo_set.extra["build"]["clusters_without_demo"]
    assert len(missing) == 1 and [r["reason"] for r in missing[0]["rejected"]] == [
        "rationale does not end with a full stop (cut off?)", "no answer extracted",
        "rationale has 6 steps (> 5)", "predicted answer 40 does not appear in the rationale"]

    path = tmp_path / "auto.json"
    save_demo_set(built.demo_set, path, built.records)
    loaded = load_demo_set(path)
    assert loaded.demos == demos and loaded.source == "auto-cot" and "build" in loaded.extra


def test_heuristics_are_configurable():
    config = AutoCotConfig(num_clusters=3, max_rationale_steps=10, answer_in_rationale=False, candidates_per_cluster=1)
    built = build_demos(QUESTIONS, fake_embed, FakeGenerator(), config, progress=False)
    # only the nearest question per cluster is a candidate; looser limits let Apple 2 and Bus 2 pass
    assert sorted(d.question for d in built.demo_set.demos) == ["Apple 2?", "Bus 2?"]


def test_nothing_passes_is_a_clear_error():
    with pytest.raises(ValueError, match="no candidate in any of the 1 clusters passed the heuristics"):
        build_demos(TOPICS["money"], fake_embed, FakeGenerator(), AutoCotConfig(num_clusters=1), progress=False)
    with pytest.raises(ValueError, match="num_clusters must be a positive integer"):
        AutoCotConfig(num_clusters=0)
