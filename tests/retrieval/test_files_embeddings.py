"""Files API, /v1/embeddings and bad input, through the official openai client."""
from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.retrieval.conftest import MAX_FILE_BYTES, tiny_pdf


def test_files_upload_list_get_content_delete(live):
    client = live.client
    made = [client.files.create(file=(f"note-{i}.txt", f"note number {i}".encode()), purpose="assistants")
            for i in range(3)]
    got = client.files.retrieve(made[0].id)
    assert (got.filename, got.bytes, got.purpose) == ("note-0.txt", len("note number 0"), "assistants")
    assert client.files.content(made[1].id).read() == b"note number 1"
    first = client.files.list(limit=2, order="asc", purpose="assistants")
    rest = client.files.list(limit=100, order="asc", purpose="assistants", after=first.data[-1].id)
    listed = [f.id for f in first.data] + [f.id for f in rest.data]
    assert first.has_more and len(listed) == len(set(listed))
    assert {f.id for f in made} <= set(listed)
    assert client.files.delete(made[2].id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made[2].id)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-doesnotexist")
    assert not (live.data_dir / "files" / made[2].id).exists()


def test_upload_over_the_cap_is_413_and_leaves_nothing(live):
    before = len(list((live.data_dir / "files").iterdir()))
    with pytest.raises(openai.APIStatusError) as err:
        live.client.files.create(file=("big.txt", b"x" * (MAX_FILE_BYTES + 1)), purpose="assistants")
    assert err.value.status_code == 413 and "limit" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        live.client.files.create(file=("a.txt", b"hi"), purpose="nonsense")
    assert err.value.body["param"] == "purpose"
    assert len(list((live.data_dir / "files").iterdir())) == before


def test_embeddings_shapes_formats_and_dimensions(live):
    client = live.client
    texts = ["The cat sat on the mat.", "A rocket burns propellant.", "Felines like to rest on rugs."]
    floats = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2", encoding_format="float")
    vectors = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]  # cats closer to cats than to rockets
    assert floats.usage.prompt_tokens > 3 * 2
    # the client asks for base64 by default and decodes it itself
    b64 = np.array([d.embedding for d in client.embeddings.create(input=texts, model="x").data], dtype=np.float32)
    assert np.allclose(b64, vectors, atol=1e-6)
    short = np.array(client.embeddings.create(input=texts[0], model="x", dimensions=64).data[0].embedding)
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1) < 1e-5
    assert np.allclose(short, vectors[0, :64] / np.linalg.norm(vectors[0, :64]), atol=1e-5)
    # token ids (this model's vocabulary) embed like the text they spell
    ids = live.service.embedder.tokenize(texts[0])
    by_ids = np.array(client.embeddings.create(input=[ids], model="x").data[0].embedding)
    assert by_ids @ vectors[0] > 0.9999
    single_ids = np.array(client.embeddings.create(input=ids, model="x").data[0].embedding)
    assert np.allclose(single_ids, by_ids, atol=1e-6)


@pytest.mark.parametrize("body, param", [
    ({"input": "", "model": "x"}, "input"),
    ({"input": [], "model": "x"}, "input"),
    ({"input": ["ok", 3], "model": "x"}, "input"),
    ({"input": [[1, 2], []], "model": "x"}, "input"),
    ({"input": [[10 ** 9]], "model": "x"}, "input"),
    ({"input": "hello", "model": "x", "dimensions": 1000}, "dimensions"),
    ({"input": "hello", "model": "x", "dimensions": 0}, "dimensions"),
])
def test_embeddings_bad_input_is_a_clear_400(live, body, param):
    reply = live.server.http().post("/v1/embeddings", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_bad_files_fail_with_last_error_and_leave_no_chunks(live):
    client = live.client
    uploads = {
        "empty.txt": b"",
        "garbage.txt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "zero.pdf": b"",
        "broken.pdf": b"%PDF-1.4\nthis is not really a pdf",
        "program.exe": b"MZ\x90\x00",
        "bad.json": b"{not json",
    }
    ids = {name: client.files.create(file=(name, data), purpose="assistants").id for name, data in uploads.items()}
    good = client.files.create(file=("fine.pdf", tiny_pdf("A perfectly good document.")), purpose="assistants")
    store = client.vector_stores.create(name="bad", file_ids=[*ids.values(), good.id])
    live.wait_idle(store.id)
    for name, file_id in ids.items():
        vs_file = client.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
        assert vs_file.status == "failed", name
        assert vs_file.last_error.message and vs_file.last_error.code in ("invalid_file", "unsupported_file"), name
        assert live.service.index.count(store.id, file_id) == 0
    assert client.vector_stores.files.retrieve(ids["program.exe"], vector_store_id=store.id).last_error.code \
        == "unsupported_file"
    counts = client.vector_stores.retrieve(store.id).file_counts
    assert (counts.failed, counts.completed) == (len(ids), 1)
    failed = client.vector_stores.files.list(vector_store_id=store.id, filter="failed", limit=100)
    assert {f.id for f in failed.data} == set(ids.values())


def test_unknown_ids_and_bad_requests_are_clear_4xx(live):
    client = live.client
    with pytest.raises(openai.NotFoundError) as err:
        client.vector_stores.retrieve("vs_missing")
    assert "vs_missing" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.search(vector_store_id="vs_missing", query="x")
    store = client.vector_stores.create(name="ids")
    with pytest.raises(openai.NotFoundError) as err:
        client.vector_stores.files.create(vector_store_id=store.id, file_id="file-missing")
    assert err.value.body["param"] == "file_id"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve("file-missing", vector_store_id=store.id)
    f = client.files.create(file=("c.txt", b"chunking test"), purpose="assistants")
    for strategy in ({"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}},
                     {"type": "static", "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 300}},
                     {"type": "fancy"}):
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id, chunking_strategy=strategy)
        assert err.value.body["param"] == "chunking_strategy"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id, attributes={"k": {"nested": 1}})
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(vector_store_id=store.id, query="", max_num_results=5)
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.create(name="x", expires_after={"anchor": "last_active_at", "days": 0})


def test_store_update_expiry_and_batch_listing(live):
    client = live.client
    store = client.vector_stores.create(name="before", metadata={"team": "a"},
                                        expires_after={"anchor": "last_active_at", "days": 7})
    assert store.expires_at == store.last_active_at + 7 * 86400
    updated = client.vector_stores.update(store.id, name="after", metadata={"team": "b"})
    assert (updated.name, updated.metadata) == ("after", {"team": "b"})
    files = [client.files.create(file=(f"b{i}.md", f"batch file {i}".encode()), purpose="assistants") for i in range(2)]
    batch = client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[f.id for f in files],
                                                     attributes={"source": "batch"})
    live.wait_idle(store.id)
    listed = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert {f.id for f in listed.data} == {f.id for f in files}
    assert all(f.attributes == {"source": "batch"} for f in listed.data)
    assert store.id in {s.id for s in client.vector_stores.list(limit=100).data}
