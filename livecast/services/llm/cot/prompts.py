"""CoT prompts: zero-shot (Kojima et al. 2022), manual few-shot (Wei et al. 2022), Auto-CoT demos.

Text prompts are assembled in this order, always:

    1. the demos, in their set's order, each "Q: {question}\nA: {rationale} The answer is {answer}.\n\n"
    2. "Q: {question}\nA:"
    3. the mode's trigger: " Let's think step by step." (zero_shot, auto, and self_consistency
       without demos), " The answer (arabic numerals) is" (none), nothing (few_shot)

Stage 2 (Kojima's answer extraction) appends the generated rationale and the format's answer
trigger, e.g. "… {rationale}\nTherefore, the answer (arabic numerals) is", and reads the first
answer of a short greedy continuation. Modes with demos need no stage 2: the demos teach the
"The answer is X." ending. Chat prompts carry the same parts as turns: each demo is a user turn
(question) and an assistant turn (rationale + answer), the trigger ends the last user turn.
Identical demos give identical prompt prefixes, so the engine's prefix cache holds them once.
"""
from __future__ import annotations

from livecast.services.llm.cot.demos import Demo
from livecast.services.llm.cot.spec import CotSpec

ZERO_SHOT_TRIGGER = "Let's think step by step."
ANSWER_TRIGGERS = {"number": "Therefore, the answer (arabic numerals) is",
                   "choice": "Therefore, among A through E, the answer is",
                   "text": "Therefore, the answer is"}
DIRECT_TRIGGERS = {"number": "The answer (arabic numerals) is",
                   "choice": "Among A through E, the answer is",
                   "text": "The answer is"}
# a rationale ends where the model starts inventing the next question
RATIONALE_STOP = ["\nQ:", "\n\n\n"]
ANSWER_STOP = ["\n"]
ANSWER_MAX_TOKENS = 16

Prompt = str | list[dict]


def render_demo(demo: Demo) -> str:
    answer_sentence = f"The answer is {demo.answer.rstrip('.')}."
    return f"Q: {demo.question}\nA: {demo.rationale} {answer_sentence}"


def trigger(spec: CotSpec, demos: list[Demo]) -> str:
    """The text that follows "A:" for the asked question."""
    if spec.mode == "none":
        return DIRECT_TRIGGERS[spec.answer_format]
    if spec.mode in ("zero_shot", "auto") or (spec.mode == "self_consistency" and not demos):
        return ZERO_SHOT_TRIGGER
    return ""


def needs_answer_stage(spec: CotSpec, demos: list[Demo]) -> bool:
    """Zero-shot rationales end anywhere; Kojima's second prompt pulls the answer out of them."""
    return spec.mode == "zero_shot" or (spec.mode == "self_consistency" and not demos)


def build_prompt(spec: CotSpec, question: str, demos: list[Demo], chat: bool = False) -> Prompt:
    """The stage-1 prompt: text for completions, a message list for chat (see module docstring)."""
    question = question.strip()
    if not question:
        raise ValueError("question is empty")
    cue = trigger(spec, demos)
    if chat:
        messages: list[dict] = []
        for demo in demos:
            messages.append({"role": "user", "content": demo.question})
            messages.append({"role": "assistant", "content": f"{demo.rationale} The answer is "
                                                             f"{demo.answer.rstrip('.')}."})
        if spec.mode == "none":
            cue = f"{cue} (give only the answer)"
        messages.append({"role": "user", "content": f"{question}\n\n{cue}" if cue else question})
        return messages
    shots = "".join(render_demo(d) + "\n\n" for d in demos)
    return f"{shots}Q: {question}\nA:" + (f" {cue}" if cue else "")


def answer_prompt(prompt: Prompt, rationale: str, answer_format: str) -> Prompt:
    """Kojima's stage 2: the stage-1 prompt, its rationale, then the answer trigger."""
    cue = ANSWER_TRIGGERS[answer_format]
    if isinstance(prompt, list):
        return [*prompt, {"role": "assistant", "content": rationale.strip()},
                {"role": "user", "content": f"{cue} … (give only the answer)"}]
    return f"{prompt} {rationale.strip()}\n{cue}"
