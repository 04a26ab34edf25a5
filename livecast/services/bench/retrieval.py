"""`livecast bench retrieval`: recall@1, recall@5 and MRR of BM25, dense and hybrid search on a
corpus of documents and questions that each name the file that answers them; ingestion and search
throughput; and the cost of brute-force dense scoring at larger chunk counts.

The corpus goes through the real service (parse → chunk → embed → SQLite/FTS5) in a temporary data
directory; each mode is the same hybrid search with one half's weight set to 0. A question's rank
is where its file first appears among the hits. Default data: the evaluation set shipped in
`services/retrieval/eval` (34 documents; 60 paraphrased questions and 12 keyword queries,
told apart by an optional "kind" field that also splits the scores).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from livecast.services.bench.report import report

EVAL_DIR = Path(__file__).resolve().parents[1] / "retrieval" / "eval"
MODES = {"bm25": (0.0, 1.0), "dense": (1.0, 0.0), "hybrid": (1.0, 1.0)}
DEPTH = 20  # hits per question; a file absent from them counts as rank infinity (reciprocal rank 0)


def load_queries(path: Path) -> list[dict]:
    queries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for q in queries:
        if not isinstance(q.get("query"), str) or not isinstance(q.get("file"), str):
            raise ValueError(f"{path}: every line needs string fields 'query' and 'file'")
    return queries


def scores(ranks: list[float]) -> dict[str, float]:
    ranks_arr = np.array(ranks, dtype=np.float64)
    return {"recall@1": float(np.mean(ranks_arr <= 1)), "recall@5": float(np.mean(ranks_arr <= 5)),
            "mrr": float(np.mean(1.0 / ranks_arr))}


async def evaluate(corpus: Path, queries: list[dict], embedding_model: str | None, device: str = "cpu") -> dict:
    from livecast.services.agents.db import Database
    from livecast.services.retrieval.config import RetrievalConfig
    from livecast.services.retrieval.service import retrieval_service

    paths = sorted(p for p in corpus.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as data_dir:
        db = Database(Path(data_dir) / "store.db")
        async with retrieval_service(RetrievalConfig(data_dir=data_dir, embedding_model=embedding_model,
                                                              device=device), db) as svc:
            ids = {}
            for path in paths:
                file_id, part = svc.files.begin()
                part.write_bytes(path.read_bytes())
                ids[path.name] = svc.files.commit(file_id, part, path.name, "assistants", None)["id"]
            missing = sorted({q["file"] for q in queries} - set(ids))
            if missing:
                raise ValueError(f"queries name files not in the corpus: {missing[:5]}")
            for _ in range(3):  # first calls pay for lazy initialisation in torch; keep it out of the figures
                await svc.embed(["warm up the embedder"] * 8)
            start = time.perf_counter()
            store = svc.vector_stores.create("bench", None, None, list(ids.values()), None)
            await svc.ingestor.idle()
            ingest_s = time.perf_counter() - start
            num_chunks = svc.index.count(store["id"])
            counts = svc.vector_stores.get(store["id"])["file_counts"]
            results, timings = {}, {}
            for mode, (dense_w, text_w) in MODES.items():
                ranks, start = [], time.perf_counter()
                for q in queries:
                    hits = await svc.search([store["id"]], q["query"], DEPTH, embedding_weight=dense_w,
                                            text_weight=text_w)
                    files = list(dict.fromkeys(h.filename for h in hits))
                    ranks.append(files.index(q["file"]) + 1 if q["file"] in files else float("inf"))
                timings[mode] = time.perf_counter() - start
                results[mode] = scores(ranks)
                for kind in sorted({q.get("kind", "all") for q in queries} - {"all"}):
                    results[f"{mode}/{kind}"] = scores([r for r, q in zip(ranks, queries) if q.get("kind") == kind])
        db.close()
    num_bytes = sum(p.stat().st_size for p in paths)
    return {"num_files": len(paths), "num_failed": counts["failed"], "num_chunks": num_chunks,
            "num_queries": len(queries), "ingest_s": ingest_s, "ingest_files_per_s": len(paths) / ingest_s,
            "ingest_kb_per_s": num_bytes / 1024 / ingest_s, "ingest_chunks_per_s": num_chunks / ingest_s,
            "modes": results, "search_qps": {m: len(queries) / t for m, t in timings.items()}}


def brute_force_ms(num_chunks: int, dim: int = 384, repeats: int = 20) -> float:
    """Median time to score one query against `num_chunks` unit vectors and take the top 50."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((num_chunks, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = matrix[0].copy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores_ = matrix @ query
        top = np.argpartition(-scores_, 49)[:50]
        top[np.argsort(-scores_[top])]
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast bench retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=EVAL_DIR / "docs", help="folder of documents")
    parser.add_argument("--queries", type=Path, default=EVAL_DIR / "queries.jsonl",
                        help='JSON lines: {"query": ..., "file": <file name in the corpus>}')
    parser.add_argument("--embedding-model", default=None, help="local embedding model folder (default: packaged MiniLM)")
    parser.add_argument("--device", default="cpu", help="torch device for the embedder")
    parser.add_argument("--scale", default="10000,100000,1000000",
                        help="chunk counts for the brute-force dense cost (comma-separated; empty: skip)")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        parser.error(f"--corpus {args.corpus} is not a folder")
    result = asyncio.run(evaluate(args.corpus, load_queries(args.queries), args.embedding_model, args.device))
    result["brute_force_ms"] = {int(n): brute_force_ms(int(n)) for n in args.scale.split(",") if n.strip()}
    rows = [[mode, s["recall@1"], s["recall@5"], s["mrr"], result["search_qps"].get(mode, "")]
            for mode, s in result["modes"].items()]
    report("retrieval", ["mode", "recall@1", "recall@5", "MRR", "queries/s"], rows, result, args.json)
    print(f"ingestion: {result['num_files']} files ({result['num_failed']} failed), {result['num_chunks']} chunks "
          f"in {result['ingest_s']:.2f} s = {result['ingest_files_per_s']:.1f} files/s, "
          f"{result['ingest_kb_per_s']:.1f} KiB/s, {result['ingest_chunks_per_s']:.1f} chunks/s")
    for n, ms in result["brute_force_ms"].items():
        print(f"brute-force dense scoring, {n} chunks x 384 dims: {ms:.2f} ms per query")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
