"""Stored chat completions in the agent store, without a model: saved per project, listed with
filters and pages, and bounded like every other stored object (age, count per project, the
messages of a swept completion with it), on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from livecast.services.agents.chat_completions import ChatCompletionStore, StoredChatCompletions
from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.db import open_database
from livecast.services.agents.store import AgentStore
from livecast.services.errors import APIError


@pytest.fixture
def store(store_url, tmp_path):
    def make(**config) -> AgentStore:
        made.append(AgentStore(open_database(store_url, tmp_path), AgentsConfig(data_dir=str(tmp_path), **config)))
        return made[-1]

    made: list[AgentStore] = []
    yield make
    for s in made:
        s.db.close()


def _completion(i: int, model: str = "m") -> dict:
    return {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}", "refusal": None},
                         "finish_reason": "stop", "logprobs": None}]}


def test_filters_pages_and_projects(store):
    agent_store = store()
    saver = ChatCompletionStore(agent_store)
    for i in range(5):
        saver.save("a", _completion(i, "m" if i % 2 == 0 else "n"), [{"role": "user", "content": f"q{i}"}],
                   {"even": str(i % 2 == 0)})
    saver.save("b", _completion(9), [{"role": "user", "content": "q"}], None)
    a = StoredChatCompletions(agent_store.scoped("a"))
    ids = lambda page: [c["id"] for c in page["data"]]  # noqa: E731
    every = a.list(model=None, metadata={}, after=None, limit=20, order="asc")
    assert ids(every) == [f"chatcmpl-{i}" for i in range(5)]
    assert ids(a.list(model="m", metadata={}, after=None, limit=20, order="desc")) == ["chatcmpl-4", "chatcmpl-2",
                                                                                       "chatcmpl-0"]
    page = a.list(model=None, metadata={"even": "True"}, after="chatcmpl-0", limit=1, order="asc")
    assert ids(page) == ["chatcmpl-2"] and page["has_more"] and page["first_id"] == "chatcmpl-2"
    assert a.list(model="x", metadata={}, after=None, limit=20, order="asc")["first_id"] == ""
    with pytest.raises(APIError) as missing:  # project b's completion is not there for a
        a.get("chatcmpl-9")
    assert missing.value.status == 404
    assert [m["id"] for m in a.messages("chatcmpl-1", after=None, limit=20, order="asc")["data"]] == ["chatcmpl-1-0"]
    assert a.delete("chatcmpl-1")["deleted"] and agent_store.chat_messages.scoped("a").count("chatcmpl-1") == 0


def test_retention_counts_per_project_and_takes_the_messages(store):
    agent_store = store(max_chat_completions=2)
    saver = ChatCompletionStore(agent_store)
    for i in range(3):
        saver.save("a", _completion(i), [{"role": "user", "content": "q"}], None)
    saver.save("b", _completion(7), [{"role": "user", "content": "q"}], None)
    agent_store.sweep()
    a = StoredChatCompletions(agent_store.scoped("a"))
    assert [c["id"] for c in a.list(model=None, metadata={}, after=None, limit=20, order="asc")["data"]] == \
        ["chatcmpl-1", "chatcmpl-2"]  # the oldest went; project b's one stays
    assert StoredChatCompletions(agent_store.scoped("b")).get("chatcmpl-7")
    assert agent_store.chat_messages.count("chatcmpl-0") == 0
