"""Files → vector store → search through the official openai client against a live server."""
from __future__ import annotations

import json

import openai
import pytest

from tests.retrieval.conftest import EVAL_DIR

# hard paraphrases from the evaluation set: few of the answer's own words
PARAPHRASES = {
    "Why did my muffins come out tough with holes inside?": "bread_yeast_vs_baking_soda.txt",
    "How did ancient engineers move water to towns using only slopes?": "roman_aqueducts.txt",
    "How do hive insects share the location of nectar with each other?": "honeybees.txt",
    "Why does a jab today stop an infection years from now?": "vaccines.md",
    "How should a website protect login secrets in case its database is stolen?": "password_hashing.md",
    "How smart are eight-armed sea animals?": "octopus.txt",
    "Why do South America and Africa look like matching puzzle pieces?": "plate_tectonics.txt",
    "How can an electric system warm a house more efficiently than a resistive heater?": "heat_pumps.md",
}


def test_store_completes_and_counts_every_file(live, eval_store):
    store_id, ids = eval_store
    store = live.client.vector_stores.retrieve(store_id)
    assert store.status == "completed"
    assert store.file_counts.completed == len(ids) and store.file_counts.failed == 0
    assert store.usage_bytes > 0
    page = live.client.vector_stores.files.list(vector_store_id=store_id, limit=100)
    assert {f.id for f in page.data} == set(ids.values())
    assert all(f.status == "completed" and f.last_error is None for f in page.data)


@pytest.mark.parametrize("query, expected", PARAPHRASES.items())
def test_paraphrased_question_finds_the_right_file_first(live, eval_store, query, expected):
    store_id, _ = eval_store
    page = live.client.vector_stores.search(vector_store_id=store_id, query=query, max_num_results=5)
    assert page.data[0].filename == expected, [h.filename for h in page.data]
    top = page.data[0]
    assert 0 < top.score <= 1 and top.content[0].type == "text" and top.content[0].text
    assert [h.score for h in page.data] == sorted((h.score for h in page.data), reverse=True)


def test_hybrid_recall_at_5_is_at_least_each_half(live, eval_store):
    store_id, _ = eval_store
    queries = [json.loads(line) for line in (EVAL_DIR / "queries.jsonl").read_text().splitlines()]
    http = live.server.http()
    recall = {}
    for mode, weights in {"bm25": (0, 1), "dense": (1, 0), "hybrid": (1, 1)}.items():
        found = 0
        for q in queries:
            reply = http.post(f"/v1/vector_stores/{store_id}/search", json={
                "query": q["query"], "max_num_results": 5,
                "ranking_options": {"hybrid_search": {"embedding_weight": weights[0], "text_weight": weights[1]}}})
            assert reply.status_code == 200, reply.text
            found += q["file"] in {h["filename"] for h in reply.json()["data"]}
        recall[mode] = found / len(queries)
    assert recall["hybrid"] >= max(recall["bm25"], recall["dense"]), recall
    assert recall["hybrid"] >= 0.9, recall


def test_score_threshold_and_query_lists(live, eval_store):
    store_id, _ = eval_store
    everything = live.client.vector_stores.search(vector_store_id=store_id, query="tea", max_num_results=20)
    strict = live.client.vector_stores.search(vector_store_id=store_id, query="tea", max_num_results=20,
                                              ranking_options={"score_threshold": 0.9})
    assert len(strict.data) < len(everything.data)
    assert all(h.score >= 0.9 for h in strict.data)
    both = live.client.vector_stores.search(vector_store_id=store_id, max_num_results=10,
                                            query=["Which enzyme captures carbon dioxide?", "octopus arms neurons"])
    names = [h.filename for h in both.data]
    assert "photosynthesis.txt" in names[:3] and "octopus.txt" in names[:3]


def test_filters_on_attributes(live):
    client = live.client
    store = client.vector_stores.create(name="filters")
    texts = {"2019": "The quarterly report says revenue from coffee machines grew slowly.",
             "2021": "The quarterly report says revenue from coffee machines grew fast.",
             "2023": "The quarterly report says revenue from coffee machines fell."}
    for year, text in texts.items():
        f = client.files.create(file=(f"report-{year}.txt", text.encode()), purpose="assistants")
        client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id,
                                          attributes={"year": int(year), "region": "eu" if year != "2021" else "us",
                                                      "final": year == "2023"})
    live.wait_idle(store.id)

    def names(flt):
        page = client.vector_stores.search(vector_store_id=store.id, query="coffee machine revenue", filters=flt)
        return sorted(h.filename for h in page.data)

    assert names({"type": "eq", "key": "region", "value": "us"}) == ["report-2021.txt"]
    assert names({"type": "gte", "key": "year", "value": 2021}) == ["report-2021.txt", "report-2023.txt"]
    assert names({"type": "and", "filters": [{"type": "eq", "key": "region", "value": "eu"},
                                             {"type": "lt", "key": "year", "value": 2022}]}) == ["report-2019.txt"]
    assert names({"type": "or", "filters": [{"type": "eq", "key": "final", "value": True},
                                            {"type": "eq", "key": "region", "value": "us"}]}) == \
        ["report-2021.txt", "report-2023.txt"]
    assert names({"type": "ne", "key": "region", "value": "eu"}) == ["report-2021.txt"]
    assert names({"type": "eq", "key": "missing", "value": 1}) == []
    for bad in ({"type": "like", "key": "year", "value": 1}, {"type": "and", "filters": []},
                {"type": "eq", "value": 1}, {"type": "gt", "key": "year", "value": [1, 2]}):
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.search(vector_store_id=store.id, query="coffee", filters=bad)
        assert err.value.body["param"] == "filters"


def test_removing_a_file_removes_its_chunks_from_search(live):
    client, service = live.client, live.service
    store = client.vector_stores.create(name="delete")
    keep = client.files.create(file=("keep.md", b"Lighthouses warn ships away from rocky coasts."),
                               purpose="assistants")
    gone = client.files.create(file=("gone.md", b"Penguins huddle together to survive the Antarctic winter."),
                               purpose="assistants")
    batch = client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[keep.id, gone.id])
    live.wait_idle(store.id)
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "completed"
    query = "birds that live on the ice near the south pole"
    assert client.vector_stores.search(vector_store_id=store.id, query=query).data[0].filename == "gone.md"
    client.vector_stores.files.delete(gone.id, vector_store_id=store.id)
    assert service.index.count(store.id, gone.id) == 0
    assert [h.filename for h in client.vector_stores.search(vector_store_id=store.id, query=query).data] == ["keep.md"]
    # deleting the file itself takes it out of every store, and the store with it counts one file less
    client.files.delete(keep.id)
    assert client.vector_stores.search(vector_store_id=store.id, query=query).data == []
    assert client.vector_stores.retrieve(store.id).file_counts.total == 0
    client.vector_stores.delete(store.id)
    assert service.db.query_one("SELECT COUNT(*) AS n FROM chunks WHERE vector_store_id = ?", (store.id,))["n"] == 0
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_pdf_is_parsed_and_searchable(live):
    from tests.retrieval.conftest import tiny_pdf

    client = live.client
    f = client.files.create(file=("memo.pdf", tiny_pdf("The annual staff picnic moves to the riverside park.")),
                            purpose="assistants")
    store = client.vector_stores.create(name="pdf", file_ids=[f.id])
    live.wait_idle(store.id)
    assert client.vector_stores.files.retrieve(f.id, vector_store_id=store.id).status == "completed"
    hit = client.vector_stores.search(vector_store_id=store.id, query="where is the company outing").data[0]
    assert hit.filename == "memo.pdf" and "riverside park" in hit.content[0].text
