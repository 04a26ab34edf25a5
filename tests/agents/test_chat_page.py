"""The Chat page's conversation mode in headless Chromium: history kept server-side (Conversations +
streamed Responses), restored after a reload, and fed back to the model on the next turn."""
from __future__ import annotations

import pytest

from tests.media.conftest import browser, chromium_path, page  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _send(page, text: str, count: int) -> dict:
    page.fill("#input", text)
    page.click("#send")
    page.wait_for_function(f"window.livecastTest.chat.replies.length === {count}", timeout=30_000)
    return page.evaluate(f"(() => {{ const r = window.livecastTest.chat.replies[{count - 1}]; "
                         f"return {{text: r.text, finish: r.finishReason, id: r.responseId}}; }})()")


def test_conversation_mode_keeps_history_on_the_server_across_a_reload(server, page, prompts):
    page.goto(f"{server.url}/chat.html")
    page.select_option("#mode", "conversation")
    page.fill("#max-tokens", "5")
    first = _send(page, "my cat is called Tom", 1)
    assert first["finish"] == "length" and first["text"] and first["id"].startswith("resp_")
    conversation_id = page.evaluate("localStorage.getItem('livecast_conversation_id')")
    store = server.app.state.agents.store
    items = store.items.children(conversation_id)
    assert [(i["role"], i["content"][0]["text"]) for i in items] == [("user", "my cat is called Tom"),
                                                                     ("assistant", first["text"])]

    page.reload()
    page.wait_for_function("window.livecastTest.chat.restored === 2", timeout=10_000)
    assert page.eval_on_selector_all("#log .msg", "els => els.map(e => e.textContent)") == \
        ["my cat is called Tom", first["text"]]
    assert page.input_value("#mode") == "conversation"
    page.fill("#max-tokens", "5")
    second = _send(page, "what is my cat called?", 1)
    assert "my cat is called Tom" in prompts[-1] and "what is my cat called?" in prompts[-1]
    assert len(store.items.children(conversation_id)) == 4
    assert server.app.state.agents.responses.get(second["id"])["conversation"] == {"id": conversation_id}

    page.click("#clear")  # a new chat starts a new conversation
    assert page.evaluate("localStorage.getItem('livecast_conversation_id')") is None
