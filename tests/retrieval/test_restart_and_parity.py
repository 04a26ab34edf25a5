"""A restart keeps everything; our embeddings match sentence-transformers' own."""
from __future__ import annotations

import numpy as np
import pytest

from tests.retrieval.conftest import Running


def test_a_new_service_on_the_same_data_dir_keeps_everything(tmp_path):
    first = Running(tmp_path)
    try:
        client = first.client
        f = client.files.create(file=("glaciers.md", b"Glaciers carve U-shaped valleys as they slowly flow downhill."),
                                purpose="assistants")
        store = client.vector_stores.create(name="persist")
        client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id, attributes={"kind": "geo"})
        first.wait_idle(store.id)
        before = client.vector_stores.search(vector_store_id=store.id, query="rivers of ice shaping mountains")
    finally:
        first.stop()
    second = Running(tmp_path)
    try:
        client = second.client
        assert client.files.retrieve(f.id).filename == "glaciers.md"
        assert client.files.content(f.id).read().startswith(b"Glaciers")
        vs_file = client.vector_stores.files.retrieve(f.id, vector_store_id=store.id)
        assert (vs_file.status, vs_file.attributes) == ("completed", {"kind": "geo"})
        after = client.vector_stores.search(vector_store_id=store.id, query="rivers of ice shaping mountains",
                                            filters={"type": "eq", "key": "kind", "value": "geo"})
        assert [(h.file_id, h.content[0].text) for h in after.data] == \
            [(h.file_id, h.content[0].text) for h in before.data]
        assert after.data[0].filename == "glaciers.md"
    finally:
        second.stop()


def test_embeddings_match_sentence_transformers(live, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the reference loads the same local folder, never a hub
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from livecast.engine.embedder import default_embedding_path

    reference = sentence_transformers.SentenceTransformer(str(default_embedding_path()), device="cpu")
    texts = ["Hello world!", "Retrieval mixes BM25 with dense vectors.", "word " * 400,
             "Ünïcödé and emoji 🚀 survive tokenization", "short"]
    expected = reference.encode(texts, normalize_embeddings=True)
    reply = live.client.embeddings.create(input=texts, model="all-MiniLM-L6-v2")
    ours = np.array([d.embedding for d in reply.data], dtype=np.float32)
    cosine = (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine
