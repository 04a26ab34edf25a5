"""The agent store: a restart keeps every stored object; retention sweeps by age and count and
cascades to children; a failed transaction leaves nothing behind; two Database objects on one store
see each other's writes. The store-level tests run on SQLite and on a real PostgreSQL server."""
from __future__ import annotations

import time
import warnings

import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.db import open_database
from livecast.services.agents.store import AgentStore, new_id
from tests.agents.conftest import ANSWER
from tests.services.conftest import running_server
from tests.agents.conftest import agents_settings


def test_a_restart_keeps_every_stored_object(tiny_llama_path, tmp_path):
    warnings.simplefilter("ignore", DeprecationWarning)
    with running_server(agents_settings(tiny_llama_path, tmp_path)) as server, server.client() as client:
        first = client.responses.create(model="tiny", input="remember me", max_output_tokens=3)
        conv = client.conversations.create(metadata={"k": "v"})
        in_conv = client.responses.create(model="tiny", input="hi", conversation=conv.id, max_output_tokens=3)
        assistant = client.beta.assistants.create(model="tiny", instructions="answer", response_format={
            "type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}})
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "yes or no?"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id,
                                                       poll_interval_ms=50)
        assert run.status == "completed"

        def snapshot(client) -> dict:
            """Every object made above, as the client reads it back."""
            return {
                "responses": [client.responses.retrieve(r.id).model_dump() for r in (first, in_conv)],
                "input_items": client.responses.input_items.list(first.id).model_dump(),
                "conversation": client.conversations.retrieve(conv.id).model_dump(),
                "items": client.conversations.items.list(conv.id).model_dump(),
                "assistant": client.beta.assistants.retrieve(assistant.id).model_dump(),
                "thread": client.beta.threads.retrieve(thread.id).model_dump(),
                "messages": client.beta.threads.messages.list(thread.id).model_dump(),
                "run": client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).model_dump(),
                "steps": client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).model_dump()}

        before = snapshot(client)
    assert (tmp_path / "livecast.db").exists()
    with running_server(agents_settings(tiny_llama_path, tmp_path)) as server, server.client() as client:
        after = snapshot(client)
        assert after == before
        assert len(after["items"]["data"]) == 2 and len(after["steps"]["data"]) == 1
        # the chain still works across the restart
        second = client.responses.create(model="tiny", input="and now?", previous_response_id=first.id,
                                         max_output_tokens=2)
        assert second.previous_response_id == first.id


@pytest.fixture
def make_store(store_url, tmp_path):
    """AgentStores on the backend under test; every one is closed at the end."""
    made = []

    def make(**config) -> AgentStore:
        made.append(AgentStore(open_database(store_url, tmp_path), AgentsConfig(data_dir=str(tmp_path), **config)))
        return made[-1].scoped("default")

    yield make
    for store in made:
        store.db.close()


def _response(store: AgentStore, n_items: int = 1) -> str:
    response_id = new_id("resp")
    with store.db.transaction():
        store.responses.insert({"id": response_id, "output": []})
        store.items.insert_many([{"id": new_id("msg")} for _ in range(n_items)], response_id)
    return response_id


def test_sweeper_caps_counts_and_cascades_to_children(make_store):
    store = make_store(max_stored_responses=2, max_items_per_conversation=3, max_threads=1)
    ids = [_response(store, n_items=2) for _ in range(5)]
    store.conversations.insert({"id": "conv_1"})
    store.items.insert_many([{"id": f"i{k}"} for k in range(5)], "conv_1")
    for t in ("thread_a", "thread_b"):
        store.threads.insert({"id": t})
        store.messages.insert({"id": f"msg_{t}"}, t)
        store.runs.insert({"id": f"run_{t}"}, t)
        store.steps.insert({"id": f"step_{t}"}, f"run_{t}")
    assert store.sweep() > 0
    assert [r for r in ids if store.responses.get(r)] == ids[-2:]  # the newest two
    assert sorted(r["parent_id"] for r in store.db.query("SELECT parent_id FROM agent_items WHERE parent_id LIKE "
                                                         "'resp%'")) == sorted([ids[-2]] * 2 + [ids[-1]] * 2)
    assert [i["id"] for i in store.items.children("conv_1")] == ["i2", "i3", "i4"]
    assert store.threads.get("thread_a") is None and store.threads.get("thread_b") is not None
    assert store.messages.children("thread_a") == [] and store.runs.children("thread_a") == []
    assert store.steps.children("run_thread_a") == [] and store.steps.children("run_thread_b") != []
    assert store.sweep() == 0  # nothing left over the limits


def test_sweeper_deletes_by_age(make_store):
    store = make_store(store_max_age_days=0.2 / 86400)  # 200 ms
    old = _response(store)
    time.sleep(0.3)
    new = _response(store)
    store.sweep()
    assert store.responses.get(old) is None and store.items.children(old) == []
    assert store.responses.get(new) is not None and len(store.items.children(new)) == 1


def test_a_failed_transaction_writes_nothing_and_pages_keep_creation_order(make_store):
    store = make_store()
    with pytest.raises(RuntimeError):
        with store.db.transaction():
            store.responses.insert({"id": "resp_x", "output": []})
            store.items.insert({"id": "msg_x"}, "resp_x")
            raise RuntimeError("generation failed before the commit")
    assert store.responses.get("resp_x") is None and store.items.children("resp_x") == []
    store.items.insert_many([{"id": f"z{k}"} for k in range(5)], "conv")  # ids that do not sort by time
    store.items.insert_many([{"id": "a"}], "conv")
    first, more = store.items.page("conv", limit=4, order="asc")
    assert [i["id"] for i in first] == ["z0", "z1", "z2", "z3"] and more
    rest, more = store.items.page("conv", after="z3", limit=4, order="asc")
    assert [i["id"] for i in rest] == ["z4", "a"] and not more


def test_two_databases_on_one_store_see_each_others_writes(make_store):
    """What replicas sharing one store rely on: a commit on one is visible to the other, an open
    transaction is not, one that raises leaves nothing, and a nested block joins the outer one."""
    first, second = make_store(), make_store()
    first.responses.insert({"id": "resp_1", "output": []})
    assert second.responses.get("resp_1") == {"id": "resp_1", "output": []}
    with first.db.transaction():
        first.conversations.insert({"id": "conv_1"})
        assert second.conversations.get("conv_1") is None  # not yet committed
    assert second.conversations.get("conv_1") == {"id": "conv_1"}
    with pytest.raises(RuntimeError):
        with first.db.transaction():
            first.conversations.insert({"id": "conv_2"})
            first.items.insert({"id": "msg_2"}, "conv_2")
            raise RuntimeError("failed before the commit")
    assert second.conversations.get("conv_2") is None and second.items.children("conv_2") == []
    with first.db.transaction():
        first.threads.insert({"id": "thread_1"})
        with pytest.raises(KeyError):
            with first.db.transaction():
                first.threads.insert({"id": "thread_2"})
                raise KeyError("caught by the outer block, which goes on and commits")
    assert [t["id"] for t in second.threads.page(order="asc")[0]] == ["thread_1", "thread_2"]
    second.delete_conversation("conv_1")
    assert first.conversations.get("conv_1") is None
