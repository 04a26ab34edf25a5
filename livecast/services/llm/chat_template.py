"""OpenAI chat messages → one prompt string through the model's own chat template.

Tool use follows the Hermes/Qwen convention, rendered here so it works with any template (the
default SmolLM2 template knows nothing of tools): the function signatures go into the system
prompt inside `<tools>`, earlier assistant calls become `<tool_call>{…}</tool_call>` text and
`role: "tool"` results become a user turn of `<tool_response>` blocks.
"""
from __future__ import annotations

import json

from livecast.services.errors import APIError
from livecast.services.llm.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# for tokenizers that ship without a chat template (e.g. a bare test checkpoint)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = True) -> str:
    """`messages` as OpenAI dicts; `tools` as OpenAI `{"type": "function", "function": {…}}` dicts
    (None or empty: no tool prompt). Raises APIError(400) for messages the template rejects."""
    if not messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    turns = _normalize(messages)
    if tools:
        prompt = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{prompt}"}
        else:
            turns.insert(0, {"role": "system", "content": prompt})
    template = None if getattr(tokenizer, "chat_template", None) else CHATML_TEMPLATE
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             chat_template=template)
    except Exception as exc:  # jinja's TemplateError, or a template's raise_exception()
        raise APIError(400, f"the chat template rejected these messages: {exc}", param="messages") from exc


def _normalize(messages: list[dict]) -> list[dict]:
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message["role"]
        content = _text(message.get("content"), i)
        if role == "developer":
            role = "system"
        if role == "assistant" and message.get("tool_calls"):
            calls = [_render_call(call) for call in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if turns and turns[-1].get("tool_results"):  # consecutive results share one user turn
                turns[-1]["content"] += "\n" + block
                continue
            turns.append({"role": "user", "content": block, "tool_results": True})
            continue
        turns.append({"role": role, "content": content})
    for turn in turns:
        turn.pop("tool_results", None)
    return turns


def _text(content, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, f"messages[{index}].content: only text parts are supported, got "
                                f"{part.get('type')!r}", param=f"messages.{index}.content")
        parts.append(part.get("text") or "")
    return "".join(parts)


def _render_call(call: dict) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments)
    except (TypeError, ValueError):
        pass  # keep the client's string as is
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"
