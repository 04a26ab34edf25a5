"""The native int4/int8 GEMMs' instruction-set variants (AVX2, AVX-VNNI, AVX-512 VNNI): the library
picks the one the CPU flags call for, and every variant this CPU runs gives the AVX2 variant's
output bit for bit (the dots are integer, the float math after them shared) and so meets the
references. Variants the CPU cannot run are refused, never run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from livecast.kernels.cpu import cpu_flags
from livecast.kernels.native import quant_gemm as qg
from livecast.kernels.native.decode_layers import (
    DecoderStack,
    LayerWeights,
    QuantLinear,
)
from tests.kernels.test_native_quant_gemm import _assert_close, _q4, _round_activations

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = qg.runnable_gemm_variants()
NOT_RUNNABLE = [name for name in qg.GEMM_VARIANTS if name not in RUNNABLE]
AVX512_VNNI = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}

PROBE = """
from livecast.kernels.native import quant_gemm as qg
lib = qg.library()
print(qg.gemm_variant())
print(*[lib.lc_gemm_variant_runs(name.encode()) for name in qg.GEMM_VARIANTS])
"""


def _probe(**env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LIVECAST_GEMM_VARIANT"}
    return subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_fresh_load_picks_the_variant_the_cpu_flags_call_for():
    done = _probe()
    assert done.returncode == 0, done.stderr[-2000:]
    picked, runs = done.stdout.split("\n")[:2]
    flags = cpu_flags()
    # written out here rather than read from the library's table: the widest the CPU has
    want = "avx512vnni" if AVX512_VNNI <= flags else "avxvnni" if "avx_vnni" in flags else "avx2"
    assert picked == want == qg.expected_gemm_variant(), (picked, want, sorted(flags & (AVX512_VNNI | {"avx_vnni"})))
    # the C side's __builtin_cpu_supports agrees with /proc/cpuinfo on every variant
    assert [name for name, ok in zip(qg.GEMM_VARIANTS, runs.split()) if ok == "1"] == RUNNABLE
    assert "avx2" in RUNNABLE


@pytest.mark.parametrize("flags,want", [
    ({"avx2"}, "avx2"),
    ({"avx2", "avx_vnni"}, "avxvnni"),
    ({"avx2", *AVX512_VNNI}, "avx512vnni"),
    ({"avx2", "avx_vnni", *AVX512_VNNI}, "avx512vnni"),
    ({"avx2", "avx512f", "avx512_vnni"}, "avx2"),  # VNNI without BW/VL: the 512-bit loops need both
])
def test_the_variant_each_kind_of_cpu_gets(flags, want):
    assert qg.expected_gemm_variant(frozenset(flags)) == want
    assert "avx512vnni_ymm" not in {qg.expected_gemm_variant(frozenset(flags))}  # picked by name only


def test_the_env_override_is_obeyed():
    done = _probe(LIVECAST_GEMM_VARIANT="avx2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "avx2"


@pytest.mark.parametrize("name", NOT_RUNNABLE)
def test_a_variant_the_cpu_lacks_is_refused(name):
    done = _probe(LIVECAST_GEMM_VARIANT=name)
    assert done.returncode != 0 and f"LIVECAST_GEMM_VARIANT={name}" in done.stderr and "lacks" in done.stderr
    before = qg.gemm_variant()
    with pytest.raises(RuntimeError, match="lacks"):
        qg.set_gemm_variant(name)
    assert qg.gemm_variant() == before


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown GEMM variant"):
        qg.set_gemm_variant("sse2")
    done = _probe(LIVECAST_GEMM_VARIANT="sse2")
    assert done.returncode != 0 and "LIVECAST_GEMM_VARIANT=sse2" in done.stderr


def _per_variant(fn) -> dict[str, torch.Tensor]:
    outs = {}
    for name in RUNNABLE:
        with qg.gemm_variant_override(name):
            assert qg.gemm_variant() == name
            outs[name] = fn()
    return outs


@pytest.mark.parametrize("m", [1, 3, 4, 5, 16, 17])
@pytest.mark.parametrize("n,k,group_size", [(136, 256, 32), (960, 576, 32), (72, 1536, 64), (8, 512, 256)])
def test_q4_variants_equal_avx2_and_the_reference(m, n, k, group_size):
    codes, scales, mins, weight = _q4(n, k, group_size, seed=7 * m + n)
    packed, s8, m8 = qg.pack_q4(codes, scales, mins)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k))
    outs = _per_variant(lambda: qg.q4_gemm(x, packed, s8, m8, group_size))
    ref = _round_activations(x) @ weight.t()
    for name, out in outs.items():
        assert torch.equal(out, outs["avx2"]), f"{name} differs from avx2 by {(out - outs['avx2']).abs().max()}"
        _assert_close(out, ref)


@pytest.mark.parametrize("m", [1, 2, 4, 7, 16])
@pytest.mark.parametrize("n,k", [(136, 256), (960, 576), (24, 1536)])
def test_q8_variants_equal_avx2_and_the_reference(m, n, k):
    g = torch.Generator().manual_seed(m * k + n)
    # every int8 code, -128 included (a GGUF Q8_0 may hold it; the VNNI path offsets codes by 128)
    codes = torch.randint(-128, 128, (n // qg.OCTET, k * qg.OCTET), dtype=torch.int8, generator=g)
    codes[0, :64] = -128
    scales = (torch.rand(n // qg.OCTET, k // qg.BLOCK, qg.OCTET, generator=g) * 0.02 + 1e-3).half()
    x = torch.randn(m, k, generator=g)
    x[:, :32] = -x[:, :32].abs()  # a block whose codes sum far from zero
    outs = _per_variant(lambda: qg.q8_gemm(x, codes, scales))
    ref = _round_activations(x) @ qg.dequantize_q8(codes, scales).t()
    for name, out in outs.items():
        assert torch.equal(out, outs["avx2"]), f"{name} differs from avx2 by {(out - outs['avx2']).abs().max()}"
        _assert_close(out, ref)


def _linear(bits: int, n: int, k: int, g: torch.Generator) -> QuantLinear:
    if bits == 8:
        codes, scales = qg.quantize_q8(torch.randn(n, k, generator=g) / k ** 0.5)
        return QuantLinear(8, n, k, qg.BLOCK, codes, scales)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scales = torch.rand(n, k // 32, generator=g) * 0.02 / k ** 0.5 + 1e-3
    packed, s8, m8 = qg.pack_q4(codes, scales, -8 * scales)
    return QuantLinear(4, n, k, 32, packed, s8, m8)


def test_the_fused_decode_stack_runs_the_picked_variant():
    """decode_layers.c calls the GEMMs through the same dispatch: each variant gives the AVX2 bits."""
    hidden, heads, kv_heads, head_dim, inter, bs, num_blocks = 64, 4, 2, 16, 96, 4, 8
    g = torch.Generator().manual_seed(3)
    layers = [LayerWeights(torch.rand(hidden, generator=g) + 0.5, torch.rand(hidden, generator=g) + 0.5,
                           _linear(4, (heads + 2 * kv_heads) * head_dim, hidden, g),
                           _linear(8 if i == 0 else 4, hidden, heads * head_dim, g),
                           _linear(4, 2 * inter, hidden, g), _linear(8, hidden, inter, g)) for i in range(2)]
    angles = torch.arange(32.0)[:, None] * torch.rand(head_dim // 2, generator=g)
    stack = DecoderStack(hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=inter,
                         eps=1e-5, scale=head_dim ** -0.5, cos_sin=torch.cat([angles.cos(), angles.sin()], 1),
                         layers=layers)
    caches = [tuple(torch.randn(kv_heads, num_blocks, bs, head_dim, generator=g) for _ in range(2)) for _ in layers]
    tokens = torch.randn(3, hidden, generator=g)
    lens = torch.tensor([5, 2, 7], dtype=torch.int32)
    tables = torch.tensor([[0, 1], [2, 3], [4, 5]], dtype=torch.int32)

    positions = lens.long() - 1
    slots = tables[torch.arange(3), positions // bs].long() * bs + positions % bs

    def step():
        fresh = [tuple(c.clone().permute(1, 2, 0, 3) for c in pair) for pair in caches]  # head-major views
        out, residual = stack.run(tokens, fresh, positions, slots, tables, lens)
        return torch.cat([out.flatten(), residual.flatten(), *(c.flatten() for pair in fresh for c in pair)])

    outs = _per_variant(step)
    assert torch.isfinite(outs["avx2"]).all() and outs["avx2"].abs().max() > 0
    for name, out in outs.items():
        assert torch.equal(out, outs["avx2"]), name


def test_the_bench_rows_time_every_runnable_variant_against_avx2():
    from livecast.services.bench import kernels as bench

    calls = []

    def counting_ms(fn):  # a fixed "time" per variant: the rows' arithmetic, not this machine's speed
        fn()
        calls.append(qg.gemm_variant())
        return {"avx2": 2.0}.get(calls[-1], 1.0)

    rows = bench.measure_gemm_variants(bits=8, num_rows=3, rounds=2, time_ms=counting_ms)
    assert [row["variant"] for row in rows] == RUNNABLE and calls == RUNNABLE * 2  # alternating rounds
    for row in rows:
        assert set(bench.GEMM_HEADERS) <= set(row) and row["rows"] == 3
        assert row["vs_avx2"] == (1.0 if row["variant"] == "avx2" else 2.0)
