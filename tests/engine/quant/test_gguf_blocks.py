import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize

from livecast.engine.quant.gguf import BLOCK_BYTES, decode_q4, dequantize, read_gguf, unpermute_rows


def _random_blocks(qtype: str, rows: int, blocks: int, seed: int) -> np.ndarray:
    """Random codes in every bit, with finite fp16 d (and m) so the reference is well defined."""
    rng = np.random.default_rng(seed)
    size = BLOCK_BYTES[qtype]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    raw[..., 0:2] = rng.uniform(0.001, 0.05, (rows, blocks)).astype(np.float16)[..., None].view(np.uint8)
    if qtype == "Q4_1":
        raw[..., 2:4] = rng.uniform(-0.5, 0.5, (rows, blocks)).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, blocks * size)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_dequantization_matches_the_gguf_package(qtype):
    raw = _random_blocks(qtype, rows=48, blocks=6, seed=len(qtype))
    expected = gguf_dequantize(raw, GGMLQuantizationType[qtype])
    np.testing.assert_allclose(dequantize(raw, qtype).numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_q4_blocks_are_int4_groups_of_32(qtype):
    raw = _random_blocks(qtype, rows=16, blocks=2, seed=3)
    weight = decode_q4(raw, qtype)
    assert weight.group_size == 32 and weight.codes.shape == (16, 64) and int(weight.codes.max()) <= 15


def test_corrupt_blocks_name_the_tensor():
    raw = _random_blocks("Q4_1", rows=16, blocks=2, seed=4)
    raw[3, 0:2] = np.array([np.nan], dtype=np.float16).view(np.uint8)
    with pytest.raises(ValueError, match=r"blk\.7\.attn_q\.weight: block scales contain NaN"):
        decode_q4(raw, "Q4_1", "blk.7.attn_q.weight")
    with pytest.raises(ValueError, match=r"blk\.7\.ffn_up\.weight: Q4_0 data must be uint8 rows of whole 18-byte"):
        decode_q4(raw[:, :30], "Q4_0", "blk.7.ffn_up.weight")


def test_unpermute_inverts_llama_cpp_permutation():
    num_heads, rows = 3, 3 * 8
    w = torch.arange(rows)
    permuted = w.view(num_heads, 2, rows // num_heads // 2).transpose(1, 2).reshape(rows)  # convert_hf_to_gguf
    assert torch.equal(permuted[unpermute_rows(rows, num_heads)], w)


def test_unsupported_gguf_type_fails_naming_the_tensor(tmp_path):
    path = tmp_path / "q6k.gguf"
    writer = GGUFWriter(str(path), "llama")
    q6k_bytes = 210  # one 256-value Q6_K super-block
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, q6k_bytes), dtype=np.uint8),
                      raw_dtype=GGMLQuantizationType.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight: GGUF type Q6_K is not supported natively"):
        list(read_gguf(path, num_heads=4, num_kv_heads=2))
