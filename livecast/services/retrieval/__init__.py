"""Retrieval: the Files API, an OpenAI-compatible embeddings endpoint, vector stores with hybrid
(dense + BM25) search, and the `search` call the `file_search` tool uses. Offline on a CPU: the
embedder is the packaged all-MiniLM-L6-v2 (`engine.embedder`)."""
