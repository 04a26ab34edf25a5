"""The pieces without a server: chunking, filters, parsers and the embedding batcher."""
from __future__ import annotations

import threading

import pytest

from livecast.services.retrieval.chunking import ChunkingStrategy, chunk_text, embedding_windows
from livecast.services.retrieval.embeddings import EmbeddingBatcher
from livecast.services.retrieval.filters import matches, validate_filter
from livecast.services.retrieval.parsers import ParseError, extract_text
from livecast.services.errors import APIError


def words_tokenizer(text):
    """One token per whitespace-separated word, with offsets: enough to test the windows."""
    import re

    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    return list(range(len(spans))), spans


def test_static_chunks_overlap_and_quote_the_original_text():
    text = " ".join(f"w{i}" for i in range(1000))
    chunks = chunk_text(text, words_tokenizer, ChunkingStrategy(300, 100, "static"))
    assert [len(c.token_ids) for c in chunks] == [300, 300, 300, 300, 200]
    assert chunks[0].text.split()[-100:] == chunks[1].text.split()[:100]
    assert chunks[1].text.startswith("w200 ") and chunks[-1].text.endswith("w999")
    assert chunk_text("", words_tokenizer, ChunkingStrategy()) == []
    assert embedding_windows(list(range(600)), 254)[-1] == list(range(508, 600))


@pytest.mark.parametrize("size, overlap", [(99, 0), (4097, 0), (800, 401), (200, -1)])
def test_chunking_bounds(size, overlap):
    with pytest.raises(ValueError, match="chunking_strategy"):
        ChunkingStrategy(size, overlap, "static")


def test_chunking_request_shapes():
    assert ChunkingStrategy.from_request(None) == ChunkingStrategy(800, 400, "auto")
    static = ChunkingStrategy.from_request({"type": "static", "static": {"max_chunk_size_tokens": 100,
                                                                         "chunk_overlap_tokens": 50}})
    assert static.to_dict() == {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}


def test_filters_compare_and_combine():
    attrs = {"year": 2021, "region": "eu", "final": True, "score": 0.5}
    assert matches(validate_filter({"type": "gt", "key": "score", "value": 0.25}), attrs)
    assert not matches({"type": "eq", "key": "final", "value": 1}, attrs)  # a boolean is not the number 1
    assert not matches({"type": "gt", "key": "region", "value": 3}, attrs)  # string vs number: no match
    assert matches({"type": "in", "key": "region", "value": ["us", "eu"]}, attrs)
    assert matches({"type": "nin", "key": "missing", "value": ["x"]}, attrs)
    nested = {"type": "or", "filters": [{"type": "and", "filters": [{"type": "lte", "key": "year", "value": 2020}]},
                                        {"type": "eq", "key": "region", "value": "eu"}]}
    assert matches(validate_filter(nested), attrs)
    with pytest.raises(ValueError, match=r"filters\.filters\[1\]\.key"):
        validate_filter({"type": "and", "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "eq", "value": 1}]})


def test_parsers_html_json_and_reasons():
    html = b"<html><head><style>p{}</style></head><body><h1>Title</h1><p>Caf&eacute; <b>open</b></p></body></html>"
    assert extract_text("page.html", html) == "Title\n\nCaf\u00e9 open"
    assert '"key": "value"' in extract_text("data.json", b'{"key": "value"}')
    assert "def main" in extract_text("tool.py", b"def main():\n    return 1\n")
    for name, data, reason in [("a.txt", b"", "empty"), ("b.txt", b"\x00\x01binary", "binary"),
                               ("c.txt", b"\xff\xfe\xfa bad", "UTF-8"), ("d.pdf", b"", "empty"),
                               ("e.docx", b"PK", "unsupported"), ("f.json", b"[1,", "JSON")]:
        with pytest.raises(ParseError, match=reason):
            extract_text(name, data)


class CountingEmbedder:
    """A stand-in model (the batcher is under test, not the model): records each call's size."""
    dim, vocab_size, max_seq_length = 4, 100, 16

    def __init__(self):
        self.calls = []

    def input_ids(self, texts):
        return [[1, len(t) % 90 + 5, 2] for t in texts]

    def encode_ids(self, ids):
        import torch

        self.calls.append(len(ids))
        out = torch.zeros(len(ids), self.dim)
        out[:, 0] = torch.tensor([float(row[1]) for row in ids])
        return out


def test_batcher_merges_callers_and_keeps_order():
    model = CountingEmbedder()
    batcher = EmbeddingBatcher(model, max_batch_inputs=8, max_queued_inputs=32)
    woken = threading.Event()
    batcher.set_notify(woken.set)
    futures = [batcher.submit(["a" * n for n in range(i, i + 3)]) for i in range(4)]  # 12 inputs, 4 callers
    assert woken.is_set() and batcher.has_work()
    assert batcher.step() == 8 and batcher.step() == 4 and not batcher.has_work()
    assert model.calls == [8, 4]
    for i, future in enumerate(futures):
        result = future.result(timeout=1)
        assert result.vectors[:, 0].tolist() == [n % 90 + 5 for n in range(i, i + 3)]
        assert result.num_tokens == 9


def test_batcher_full_queue_is_a_503_and_bad_ids_a_value_error():
    batcher = EmbeddingBatcher(CountingEmbedder(), max_batch_inputs=4, max_queued_inputs=8)
    batcher.submit(["x"] * 6)
    with pytest.raises(APIError) as err:
        batcher.submit(["y"] * 3)
    assert err.value.status == 503 and err.value.code == "queue_full"
    with pytest.raises(ValueError, match="vocabulary"):
        batcher.submit([[1, 500]])
    batcher.start()
    assert batcher.submit(["z"]).result(timeout=5).vectors.shape == (1, 4)
    batcher.stop()
