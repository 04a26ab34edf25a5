"""The shared store: two app replicas on one PostgreSQL database serve each other's responses and
conversations; replicas starting together create the schema without a race; a bad store URL fails
at startup, fast, naming the URL with its password masked; lexical search takes any query text and
dense search sees chunks another replica wrote, on both backends."""
from __future__ import annotations

import socket
import threading
import time
import warnings

import numpy as np
import openai
import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.agents.db import mask_url, open_database
from livecast.services.retrieval.file_store import FileStore
from livecast.services.retrieval.index import ChunkIndex
from livecast.services.retrieval.vector_stores import VectorStores
from livecast.services.agents.store import AgentStore
from tests.agents.conftest import agents_settings
from tests.postgres import free_port
from tests.services.conftest import running_server, tiny_settings


def test_two_replicas_on_one_postgresql_store_serve_each_others_objects(tiny_llama_path, postgres, tmp_path):
    warnings.simplefilter("ignore", DeprecationWarning)
    url = postgres.new_database()
    # separate data folders: whatever B finds, it found through the database
    settings = [agents_settings(tiny_llama_path, tmp_path / name, store_url=url) for name in ("a", "b")]
    with running_server(settings[0]) as a, running_server(settings[1]) as b, a.client() as on_a, b.client() as on_b:
        first = on_a.responses.create(model="tiny", input="remember me", max_output_tokens=3, store=True)
        conv = on_a.conversations.create(metadata={"topic": "replicas"})
        on_a.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "hello"}])
        # every read on replica B finds what replica A wrote, field for field
        assert on_b.responses.retrieve(first.id).model_dump() == on_a.responses.retrieve(first.id).model_dump()
        assert [i.content[0].text for i in on_b.responses.input_items.list(first.id).data] == ["remember me"]
        assert on_b.conversations.retrieve(conv.id).metadata == {"topic": "replicas"}
        assert [i.content[0].text for i in on_b.conversations.items.list(conv.id).data] == ["hello"]
        # and the other way round: B continues A's chain and conversation, A sees the result
        second = on_b.responses.create(model="tiny", input="and now?", previous_response_id=first.id,
                                       max_output_tokens=2)
        on_b.responses.create(model="tiny", input="next", conversation=conv.id, max_output_tokens=2)
        assert on_a.responses.retrieve(second.id).previous_response_id == first.id
        assert len(on_a.conversations.items.list(conv.id).data) == 3  # hello, next, the answer
        on_a.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            on_b.responses.retrieve(first.id)
        assert a.app.state.agents.health()["store"] == url  # no password in this URL: shown as is


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's exit on failure
def test_a_bad_store_url_fails_at_startup_naming_it(tiny_llama_path, tmp_path, capfd):
    with pytest.raises(ValueError, match=r"mysql://x"):
        AgentsConfig(data_dir=str(tmp_path), store_url="mysql://x")
    with pytest.raises(ValueError, match=r"mysql://root:\*\*\*@db/x") as err:
        AgentsConfig(data_dir=str(tmp_path), store_url="mysql://root:hunter2@db/x")
    assert "hunter2" not in str(err.value)
    # nothing listens on the port: refused at once
    refused = f"postgresql://livecast:hunter2@127.0.0.1:{free_port()}/store"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"postgresql://livecast:\*\*\*@127\.0\.0\.1:\d+/store") as err:
        open_database(refused, tmp_path)
    assert "hunter2" not in str(err.value) and time.monotonic() - start < 5
    # a port that accepts connections and never answers: connect_timeout ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="timeout"):
            open_database(f"postgresql://livecast@127.0.0.1:{silent.getsockname()[1]}/x?connect_timeout=2", tmp_path)
        assert time.monotonic() - start < 6
    # the whole app (no LLM to load first): startup fails, no hang, and the log names the URL, masked
    settings = tiny_settings(tiny_llama_path, enable_llm=False,
                             agents=AgentsConfig(data_dir=str(tmp_path), store_url=refused))
    with pytest.raises(RuntimeError, match="did not start"):
        with running_server(settings):
            pass
    logged = capfd.readouterr().err
    assert mask_url(refused) in logged and "hunter2" not in logged


def test_a_password_is_masked_wherever_the_store_is_shown(postgres, tmp_path):
    assert mask_url("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url("postgres://h/d?user=u&password=secret&sslmode=require") == \
        "postgres://h/d?user=u&password=***&sslmode=require"
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"
    db = open_database(postgres.url("postgres", password="hunter2"), tmp_path)  # trust auth ignores it
    try:
        assert db.path == postgres.url("postgres", password="***") and "hunter2" not in db.path
    finally:
        db.close()


def test_replicas_starting_together_create_the_schema_once(postgres, tmp_path):
    url, errors, dbs = postgres.new_database(), [], []

    def replica() -> None:
        try:
            db = open_database(url, tmp_path)
            dbs.append(db)
            store = AgentStore(db, AgentsConfig(data_dir=str(tmp_path)))
            files = FileStore(db, tmp_path, 1 << 20)
            VectorStores(db, files, ChunkIndex(db, dim=4), lambda *_: None)
            store.scoped("default").responses.insert({"id": f"resp_{threading.get_ident()}"})
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(dbs) == 6
        assert dbs[0].query_one("SELECT COUNT(*) AS n FROM agent_responses")["n"] == 6
    finally:
        for db in dbs:
            db.close()


def test_lexical_search_takes_any_query_text(store_url, tmp_path):
    db = open_database(store_url, tmp_path)
    try:
        index = ChunkIndex(db, dim=4)
        texts = ["Glaciers carve valleys while running slowly downhill.", "It's 100% proof: O'Brien's kettle_boiler.",
                 "Honeybees dance to show where the flowers are."]
        with db.transaction():
            index.add("vs_1", "file_a", texts[:2], np.eye(4, dtype=np.float32)[:2])
            index.add("vs_1", "file_b", texts[2:], np.eye(4, dtype=np.float32)[2:3])
        ids = {r["text"]: r["id"] for r in db.query("SELECT id, text FROM chunks")}
        assert index.lexical("vs_1", "the glacier runs", 5, None)[0] == ids[texts[0]]  # stems on both
        assert index.lexical("vs_1", "bee dance", 5, {"file_a"}) == []  # the filter applies
        assert index.lexical("vs_1", "dance", 5, {"file_b"}) == [ids[texts[2]]]
        for hostile in ("it's O'Brien's", "a & b | !c <-> (d", "100%", "kettle_boiler", "\\ ' \" :* ", "ü 🚀"):
            index.lexical("vs_1", hostile, 5, None)  # never a syntax error from the engine
        assert ids[texts[1]] in index.lexical("vs_1", "O'Brien's kettle", 5, None)
        hits = index.search(["vs_1"], ["honeybee dancing"], np.eye(4, dtype=np.float32)[2:3], k=2)
        assert hits[0].text == texts[2] and hits[0].score == pytest.approx(1.0)
    finally:
        db.close()


def test_dense_search_sees_chunks_another_replica_wrote(store_url, tmp_path):
    writer, reader = open_database(store_url, tmp_path), open_database(store_url, tmp_path)
    try:
        ours, theirs = ChunkIndex(writer, dim=4), ChunkIndex(reader, dim=4)
        unit = np.eye(4, dtype=np.float32)
        with writer.transaction():
            ours.add("vs_1", "file_a", ["north"], unit[:1])
        assert len(theirs.dense("vs_1", unit[1], 5, None)) == 1  # the reader caches a one-chunk matrix
        with writer.transaction():
            ours.add("vs_1", "file_b", ["east"], unit[1:2])
        hits = theirs.search(["vs_1"], ["east"], unit[1:2], k=1)
        assert [h.file_id for h in hits] == ["file_b"] and hits[0].score == pytest.approx(1.0)
        ours.delete("vs_1", "file_b")
        assert [h.file_id for h in theirs.search(["vs_1"], ["east"], unit[1:2], k=5)] == ["file_a"]
    finally:
        writer.close()
        reader.close()
