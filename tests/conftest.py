"""Fixtures for every suite: the real SmolLM2 (converted once) and tiny random Llamas for speed."""
from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the agent store of every app a test builds lives in a temporary folder, never the user's home
os.environ["LIVECAST_DATA_DIR"] = tempfile.mkdtemp(prefix="livecast-test-")
# and the kernel choices timed at load (engine.quant.measured) are shared by this run alone
os.environ["LIVECAST_CACHE_DIR"] = os.environ["LIVECAST_DATA_DIR"]

import pytest
import torch

if not torch.cuda.is_available():
    # Triton fixes GPU-or-interpreter mode at its first import, which any suite may trigger
    os.environ.setdefault("TRITON_INTERPRET", "1")

from livecast.engine.model_loader import resolve_model


@pytest.fixture(scope="session")
def smollm2_path():
    return resolve_model(None)


def make_tiny_llama(path, tokenizer_src, *, seed=0, model_type="llama", **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    params = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  pad_token_id=2)
    params.update(overrides)
    config = AutoConfig.for_model(model_type, **params)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random init is tiny (std 0.02); larger weights give peaked, tie-free distributions
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.25)
    model.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_src / name).exists():
            shutil.copy(tokenizer_src / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory, smollm2_path):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_path)


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole session (started only if a test asks for it)."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
