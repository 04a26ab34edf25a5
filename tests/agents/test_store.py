"""The agent store: a restart keeps every stored object; retention sweeps by age and count and
cascades to children; a failed transaction leaves nothing behind; two Database objects on one store
see each other's writes; a project sees only its own objects, and a store made before projects
opens with its objects in `default`. The store-level tests run on SQLite and on a real PostgreSQL
server."""
from __future__ import annotations

import json
import time
import warnings

import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.db import open_database
from livecast.services.agents.store import AgentStore, new_id
from livecast.services.errors import APIError
from livecast.services.retrieval.file_store import FileStore
from livecast.services.retrieval.vector_stores import VectorStores
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


def test_each_project_sees_only_its_own_objects(make_store):
    store = make_store()
    a, b = store.scoped("proj_a"), store.scoped("proj_b")
    with a.db.transaction():
        a.threads.insert({"id": "thread_1"})
        a.messages.insert({"id": "msg_1"}, "thread_1")
    b.threads.insert({"id": "thread_2"})
    assert b.threads.get("thread_1") is None and b.messages.children("thread_1") == []
    with pytest.raises(APIError) as missing:
        b.threads.require("thread_1")
    assert missing.value.status == 404 and missing.value.message == "No thread found with id 'thread_1'."
    assert [t["id"] for t in b.threads.page()[0]] == ["thread_2"] and b.messages.count("thread_1") == 0
    b.threads.update({"id": "thread_1", "metadata": {"by": "b"}})
    assert not b.threads.delete("thread_1") and not b.delete_thread("thread_1")
    assert a.threads.get("thread_1") == {"id": "thread_1"} and [m["id"] for m in a.messages.children("thread_1")] == [
        "msg_1"]
    with pytest.raises(APIError):  # a page cursor of another project is not in this list
        b.threads.page(after="thread_1")


def test_retention_caps_count_per_project(make_store):
    store = make_store(max_stored_responses=2)
    a, b = store.scoped("proj_a"), store.scoped("proj_b")
    ids_a = [_response(a) for _ in range(4)]
    only_b = _response(b)  # the newest overall: a global cap would keep it and one of A's
    store.sweep()
    assert [r for r in ids_a if a.responses.get(r)] == ids_a[-2:] and b.responses.get(only_b) is not None


def test_a_store_made_before_projects_opens_with_its_objects_in_default(store_url, tmp_path):
    db = open_database(store_url, tmp_path)
    int64 = db.dialect.int64
    try:
        with db.transaction():  # the tables as they were before the project column
            db.execute(f"CREATE TABLE agent_responses (parent_id TEXT NOT NULL, id TEXT NOT NULL, created_at {int64} "
                       f"NOT NULL, body TEXT NOT NULL, PRIMARY KEY (parent_id, id))")
            db.execute("INSERT INTO agent_responses VALUES (?, ?, ?, ?)",
                       ("", "resp_old", 1, json.dumps({"id": "resp_old"})))
            db.execute(f"CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, "
                       f"bytes {int64} NOT NULL, created_at {int64} NOT NULL, expires_at {int64})")
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", ("file-old", "a.txt", "assistants", 1, 1, None))
            db.execute(f"CREATE TABLE vector_stores (id TEXT PRIMARY KEY, name TEXT, metadata TEXT NOT NULL, "
                       f"created_at {int64} NOT NULL, last_active_at {int64} NOT NULL, expires_after TEXT)")
            db.execute("INSERT INTO vector_stores VALUES (?, ?, ?, ?, ?, ?)", ("vs_old", "old", "{}", 1, 1, None))
        for _ in range(2):  # opening it again changes nothing
            store = AgentStore(db, AgentsConfig(data_dir=str(tmp_path)))
            files = FileStore(db, tmp_path, 1 << 20)
            stores = VectorStores(db, files, None, lambda *_: None)
        assert store.scoped("default").responses.get("resp_old") == {"id": "resp_old"}
        assert store.scoped("proj_b").responses.get("resp_old") is None
        assert files.scoped("default").get("file-old")["filename"] == "a.txt"
        assert stores.scoped("default").get("vs_old")["name"] == "old"
        for missing in (lambda: files.scoped("proj_b").get("file-old"), lambda: stores.scoped("proj_b").get("vs_old")):
            with pytest.raises(APIError) as error:
                missing()
            assert error.value.status == 404
        assert [f["id"] for f in stores.scoped("default").list(None, None, 20, "desc")[0]] == ["vs_old"]
        assert stores.scoped("proj_b").list(None, None, 20, "desc")[0] == []
    finally:
        db.close()
