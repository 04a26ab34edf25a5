"""Answer extraction, comparison and voting for Chain-of-Thought outputs.

Three answer formats: `number` (commas, decimals, negatives and "$" are normalised, so "$1,250.00"
and "1250" are the same answer), `choice` (one letter A–E, as in "(C)") and `text` (a short
phrase, lower-cased and stripped of punctuation for voting). Extraction returns None when the
text holds no answer of the format; comparison and voting treat None as "no answer".
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

ANSWER_FORMATS = ("number", "choice", "text")

# a thousands-grouped number ("1,234,567") or a plain one ("1234", "3.5", ".5"); an optional
# sign and "$" in front; a trailing "." is a sentence end, not a decimal point
_NUMBER = re.compile(r"(?<![\w.])(-|−)?\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d,]*\d)")
_CHOICE_PAREN = re.compile(r"\(([A-Ea-e])\)")
_CHOICE_BARE = re.compile(r"\b([A-E])\b")
# "The answer is", "Therefore, the answer (arabic numerals) is", "Final answer:"
_ANSWER_MARKER = re.compile(r"(?:therefore,?\s*)?(?:the\s+)?(?:final\s+)?answer(?:\s*\([^)]*\))?(?:\s+is|\s*:)",
                            re.IGNORECASE)
_TRAILING_LABEL = re.compile(r"(?:^|\n)\s*[A-Z]:$")


def check_format(answer_format: str, field: str = "answer_format") -> str:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"{field} must be one of {', '.join(ANSWER_FORMATS)}; got {answer_format!r}")
    return answer_format


def normalize_number(raw: str) -> str | None:
    """Canonical text of a number: "$1,250.00" → "1250", "-0.50" → "-0.5"; None if not a number."""
    match = _NUMBER.search(raw)
    if match is None:
        return None
    return _canonical(match)


def _canonical(match: re.Match) -> str:
    sign, digits = match.group(1), match.group(2).replace(",", "")
    whole, _, fraction = digits.partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    value = f"{whole}.{fraction}" if fraction else whole
    return "-" + value if sign and value != "0" else value


def find_numbers(text: str) -> list[str]:
    return [_canonical(m) for m in _NUMBER.finditer(text)]


def _choices(text: str) -> list[str]:
    found = [m.group(1).upper() for m in _CHOICE_PAREN.finditer(text)]
    return found or [m.group(1) for m in _CHOICE_BARE.finditer(text)]


def _text_answer(text: str) -> str | None:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    # the first sentence: a period followed by a space or the end, not one inside "3.5"
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    cleaned = re.sub(r"[\"'`*]", "", line).strip(" .,:;!?").lower()
    return " ".join(cleaned.split()) or None


def extract_answer(text: str, answer_format: str, which: str = "last") -> str | None:
    """The answer in `text`, normalised, or None.

    After an answer marker ("The answer is", "Therefore, the answer (arabic numerals) is",
    "Answer:") the first answer following the last marker wins. Without a marker, `which` picks
    the first or last candidate: Kojima's stage-2 output ("18. …") is read with "first", a bare
    rationale with "last" (the conclusion comes at the end).
    """
    check_format(answer_format)
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():]
        found = _find(tail, answer_format)
        if found:
            return found[0]
    found = _find(text, answer_format)
    if not found:
        return None
    return found[0] if which == "first" else found[-1]


def _find(text: str, answer_format: str) -> list[str]:
    if answer_format == "number":
        return find_numbers(text)
    if answer_format == "choice":
        return _choices(text)
    answer = _text_answer(text)
    return [answer] if answer else []


def split_rationale_answer(text: str, answer_format: str) -> tuple[str, str | None]:
    """(rationale, answer): the rationale is the text before the last answer marker (all of it
    when there is none); the answer is extracted from the whole text."""
    markers = list(_ANSWER_MARKER.finditer(text))
    rationale = text[:markers[-1].start()] if markers else text
    # a model imitating the "Q:/A:" layout may put the answer on its own "A: The answer is …" line
    rationale = _TRAILING_LABEL.sub("", rationale.rstrip())
    return rationale.strip(), extract_answer(text, answer_format)


def normalize_gold(answer: str | int | float, answer_format: str) -> str | None:
    """A dataset's reference answer in the same normal form as `extract_answer` produces."""
    text = str(answer)
    if answer_format == "number":
        return normalize_number(text)
    if answer_format == "choice":
        found = _choices(text.upper() if len(text.strip()) == 1 else text)
        return found[0] if found else None
    return _text_answer(text)


def answers_match(predicted: str | None, gold: str | None, answer_format: str) -> bool:
    if predicted is None or gold is None:
        return False
    if answer_format == "number":
        try:
            return abs(float(predicted) - float(gold)) < 1e-6
        except ValueError:
            return False
    return predicted == gold


def majority_vote(answers: Iterable[str | None]) -> tuple[str | None, int]:
    """(most frequent answer, its votes); None answers do not vote.

    Ties go to the tied answer that appeared first in `answers` (the lowest chain index), so the
    result is deterministic for a given order of chains. No answer at all → (None, 0).
    """
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] += 1
        first_seen.setdefault(answer, i)
    if not counts:
        return None, 0
    best = max(counts, key=lambda a: (counts[a], -first_seen[a]))
    return best, counts[best]


def vote_counts(answers: Iterable[str | None]) -> dict[str, int]:
    """Votes per answer, most votes first (ties in order of first appearance)."""
    order: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for i, answer in enumerate(answers):
        if answer is not None:
            counts[answer] += 1
            order.setdefault(answer, i)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0]])))
