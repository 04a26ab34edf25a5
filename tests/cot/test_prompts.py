"""Prompt assembly order, the `cot` request field, demo sets and question files: good and bad input."""
import json

import pytest

from livecast.services.llm.cot.offline.dataset import SHIPPED_DATASET, SHIPPED_FEWSHOT, load_questions
from livecast.services.llm.cot.demos import Demo, load_demo_set, load_named_sets
from livecast.services.llm.cot.prompts import answer_prompt, build_prompt
from livecast.services.llm.cot.spec import CotError, CotSpec

DEMOS = [Demo("Q one?", "Step one.", "1"), Demo("Q two?", "Step two.", "2")]


def test_few_shot_prompt_order():
    text = build_prompt(CotSpec("few_shot", DEMOS), "  What now?  ", DEMOS)
    assert text == ("Q: Q one?\nA: Step one. The answer is 1.\n\n"
                    "Q: Q two?\nA: Step two. The answer is 2.\n\n"
                    "Q: What now?\nA:")


def test_zero_shot_auto_none_and_self_consistency_triggers():
    assert build_prompt(CotSpec("zero_shot"), "Why?", []) == "Q: Why?\nA: Let's think step by step."
    assert build_prompt(CotSpec("none"), "Why?", []) == "Q: Why?\nA: The answer (arabic numerals) is"
    auto = build_prompt(CotSpec("auto", DEMOS), "Why?", DEMOS)
    assert auto.startswith("Q: Q one?") and auto.endswith("Q: Why?\nA: Let's think step by step.")
    assert build_prompt(CotSpec("self_consistency"), "Why?", []).endswith("A: Let's think step by step.")
    assert build_prompt(CotSpec("self_consistency", DEMOS), "Why?", DEMOS).endswith("Q: Why?\nA:")


def test_kojima_answer_stage_and_chat_form():
    prompt = build_prompt(CotSpec("zero_shot"), "Why?", [])
    assert answer_prompt(prompt, " 2 + 2 = 4. ", "number") == \
        "Q: Why?\nA: Let's think step by step. 2 + 2 = 4.\nTherefore, the answer (arabic numerals) is"
    assert answer_prompt(prompt, "x", "choice").endswith("Therefore, among A through E, the answer is")
    messages = build_prompt(CotSpec("few_shot", DEMOS), "What now?", DEMOS, chat=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "Step one. The answer is 1." and messages[-1]["content"] == "What now?"
    zero = build_prompt(CotSpec("zero_shot"), "Why?", [], chat=True)
    assert zero == [{"role": "user", "content": "Why?\n\nLet's think step by step."}]
    staged = answer_prompt(zero, "because", "number")
    assert staged[1] == {"role": "assistant", "content": "because"} and staged[2]["role"] == "user"


def test_spec_from_request_and_defaults():
    spec = CotSpec.from_request({"mode": "self_consistency"})
    assert (spec.n, spec.answer_format) == (5, "number")
    spec = CotSpec.from_request({"mode": "few_shot", "demos": [{"question": "q", "rationale": "r", "answer": 3}]})
    assert spec.demos == [Demo("q", "r", "3")]
    assert CotSpec.from_request({"mode": "zero_shot"}).n == 1


@pytest.mark.parametrize("value, param, message", [
    ({"mode": "self_consistency", "n": 0}, "cot.n", r"cot.n must be in \[1, 64\]"),
    ({"mode": "self_consistency", "n": 65}, "cot.n", r"cot.n must be in \[1, 64\]"),
    ({"mode": "self_consistency", "n": "3"}, "cot.n", "cot.n must be an integer"),
    ({"mode": "zero_shot", "n": 4}, "cot.n", "applies only to mode self_consistency"),
    ({"mode": "magic"}, "cot.mode", "cot.mode must be one of"),
    ({"n": 3}, "cot.mode", "cot.mode is required"),
    ({"mode": "few_shot"}, "cot.demos", "cot.demos is required"),
    ({"mode": "few_shot", "demos": [{"question": "q"}]}, "cot.demos", "lacks 'rationale', 'answer'"),
    ({"mode": "zero_shot", "answer_format": "float"}, "cot.answer_format", "answer_format must be one of"),
    ({"mode": "zero_shot", "temperature": 1}, "cot.temperature", "unknown field"),
    ("zero_shot", "cot", "cot must be an object"),
])
def test_spec_errors_name_the_field(value, param, message):
    with pytest.raises(CotError, match=message) as info:
        CotSpec.from_request(value)
    assert info.value.param == param


def test_named_demo_sets(tmp_path):
    sets = load_named_sets([f"arith={SHIPPED_FEWSHOT}"])
    assert len(sets["arith"].demos) == 6 and sets["arith"].source == "manual"
    spec = CotSpec.from_request({"mode": "few_shot", "demos": "arith"})
    assert spec.resolve_demos(sets) == sets["arith"].demos
    with pytest.raises(CotError, match="unknown demo set 'gsm' \\(known: arith\\)") as info:
        CotSpec.from_request({"mode": "few_shot", "demos": "gsm"}).resolve_demos(sets)
    assert info.value.param == "cot.demos"
    with pytest.raises(ValueError, match="expects NAME=PATH"):
        load_named_sets(["arith"])
    with pytest.raises(ValueError, match="does not exist"):
        load_named_sets([f"x={tmp_path / 'missing.json'}"])
    with pytest.raises(ValueError, match="names 'a' twice"):
        load_named_sets([f"a={SHIPPED_FEWSHOT}", f"a={SHIPPED_FEWSHOT}"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_demo_set(bad)
    bad.write_text(json.dumps({"demos": [{"question": "q", "rationale": "", "answer": "1"}]}))
    with pytest.raises(ValueError, match=r"demos\[0\]: demo rationale must be a non-empty string"):
        load_demo_set(bad)


def test_question_files(tmp_path):
    shipped = load_questions(SHIPPED_DATASET, require_answers=True)
    assert 60 <= len(shipped) <= 100 and all(p.answer for p in shipped)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "How many?", "answer": "3 + 4 = 7\n#### 1,007"}) + "\n\n")
    assert [(p.question, p.answer) for p in load_questions(gsm)] == [("How many?", "1,007")]
    cases = {"": "has no questions", "\n  \n": "has no questions", "{oops\n": ":1: not valid JSON",
             '{"q": 1}\n': ":1: 'question' must be a non-empty string", "[1, 2]\n": ":1: expected a JSON object"}
    for content, message in cases.items():
        path = tmp_path / "q.jsonl"
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            load_questions(path)
    path.write_text('{"question": "no answer"}\n')
    with pytest.raises(ValueError, match="'answer' is required"):
        load_questions(path, require_answers=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")
