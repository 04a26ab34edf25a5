"""Question files: JSONL, one problem a line.

    {"question": "...", "answer": 42}                     livecast / MultiArith style
    {"question": "...", "answer": "... #### 1,234"}       GSM8K: the final answer follows "####"

`answer` is optional where only questions are needed (Auto-CoT clusters unlabeled questions);
the benchmark requires it. Blank lines are skipped; anything else that is not a JSON object with
a non-empty "question" string is an error naming the file and line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHIPPED_DATASET = Path(__file__).parent / "data" / "arith.jsonl"
SHIPPED_FEWSHOT = Path(__file__).parent / "data" / "arith_fewshot.json"


@dataclass(slots=True)
class Problem:
    question: str
    answer: str | None = None  # the final answer as written (GSM8K: the text after "####")
    line: int = 0


def gold_answer(raw) -> str:
    text = str(raw)
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def load_questions(path: str | Path, require_answers: bool = False, limit: int | None = None) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"questions file {str(path)!r} does not exist")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'question', got {type(item).__name__}")
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{number}: 'question' must be a non-empty string")
        answer = item.get("answer")
        if answer is None and require_answers:
            raise ValueError(f"{path}:{number}: 'answer' is required here")
        problems.append(Problem(question.strip(), None if answer is None else gold_answer(answer), number))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"questions file {str(path)!r} has no questions")
    return problems
