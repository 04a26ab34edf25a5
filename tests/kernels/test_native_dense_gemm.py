"""The batch-invariant dense GEMM: close to a float64 reference, and every row's bits the same
whatever rows share the call, for row counts across every tile remainder and column counts
across every column-tile and panel remainder."""
import pytest
import torch

from livecast.kernels import native
from livecast.kernels.native.dense_gemm import dense_gemm, dense_gemm_reference, supports

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(1, 8), (7, 16), (50, 72), (97, 576), (1728, 576)])
def test_matches_the_reference_and_rows_do_not_depend_on_the_batch(dtype, n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    weight = torch.randn(n, k, generator=g).to(dtype)
    x = torch.randn(37, k, generator=g)
    full = dense_gemm(x, weight)
    torch.testing.assert_close(full, dense_gemm_reference(x, weight), atol=2e-5 * k ** 0.5, rtol=1e-4)
    for rows in (1, 2, 3, 4, 5, 8, 13):  # every remainder of the 4-row tile
        for start in range(0, 37 - rows + 1, 6):  # every place among the rows
            assert torch.equal(dense_gemm(x[start:start + rows], weight), full[start:start + rows])


def test_strided_rows_and_the_shapes_it_refuses():
    weight = torch.randn(24, 16)
    x = torch.randn(5, 32)[:, :16]  # row stride 32
    assert torch.equal(dense_gemm(x, weight), dense_gemm(x.contiguous(), weight))
    assert not supports(torch.randn(4, 12)) and supports(weight)
    with pytest.raises(ValueError, match="K % 8"):
        dense_gemm(torch.randn(2, 12), torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"x must be \(rows, 16\)"):
        dense_gemm(torch.randn(2, 8), weight)
    assert dense_gemm(torch.randn(0, 16), weight).shape == (0, 24)
