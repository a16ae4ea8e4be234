"""Reductions whose kept innermost dim is the contiguous one, folded as vectorised columns
(Note [Column reductions] in passes/column_reductions.cpp), against eager: sums, means, max/min,
var and softmax over non-innermost dims, channels-last means over H and W, widths that do and do
not split into column blocks, vector tails, and NaN, +-inf, -0 and large values in the data."""

import re

import pytest
import torch

import kiln
from kiln.testing import check


def with_edges(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * scale
    flat = x.view(-1)
    n = flat.numel()
    for k, v in enumerate([float("nan"), float("inf"), float("-inf"), -0.0, 1e30, -1e30]):
        flat[(k * 7919 + 13) % n] = v
    return x


def random(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def column_kernels(f):
    """Kernels of `f` folded as columns (no scalar accumulator, a store back into a column)."""
    return [k for k in kiln.kernels(f) if _folds_in_place(k.loop_ir)]


def _folds_in_place(ir):
    """Whether some store reads the buffer it writes: `bufN[i] = (bufN[i] + ...)`."""
    return any(re.match(r"\s*(buf\d+)\[.*\] = .*\b\1\[", line) for line in ir.splitlines())


def assert_columns(f):
    assert column_kernels(f), "\n\n".join(k.loop_ir for k in kiln.kernels(f))


@pytest.mark.parametrize("shape", [(64, 48), (300, 37), (7, 1024), (1000, 16), (5, 17), (3, 2048),
                                   # short columns in blocks: LLVM must not vectorise the loop over
                                   # blocks once it unrolled the short inner loops (fuzz seed 7430773)
                                   (2, 64), (2, 128), (3, 256), (2, 24), (1, 64)])
@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin"])
def test_reduce_dim0_of_row_major(shape, op):
    fn = {"sum": lambda t: t.sum(0), "mean": lambda t: t.mean(0),
          "amax": lambda t: t.amax(0), "amin": lambda t: t.amin(0)}[op]
    f = check(lambda t: fn(t * 2 + 1), (random(shape),))
    if shape[0] > 1:  # a single row reduces nothing: a pointwise copy
        assert_columns(f)


@pytest.mark.parametrize("op", ["sum", "amax", "amin"])
def test_edge_values_in_columns(op):
    x = with_edges((97, 80))
    fn = {"sum": lambda t: t.sum(0), "amax": lambda t: t.amax(0), "amin": lambda t: t.amin(0)}[op]
    f = check(fn, (x,))
    assert_columns(f)


def test_negative_zero_columns_sum_like_eager():
    x = torch.full((9, 32), -0.0)
    f = check(lambda t: t.sum(0), (x,))
    assert_columns(f)


def test_channels_last_mean_over_hw_fuses_with_its_producer():
    x = random((4, 96, 7, 9)).contiguous(memory_format=torch.channels_last)
    f = check(lambda t: torch.nn.functional.silu(t).mean((2, 3), keepdim=True), (x,))
    assert_columns(f)
    f = check(lambda t: torch.nn.functional.adaptive_avg_pool2d(t * 3, 1), (x,))


def test_middle_dim_of_3d():
    x = random((6, 50, 40))
    f = check(lambda t: t.sum(1) + t.amax(1), (x,))
    assert_columns(f)


def test_var_and_softmax_over_dim0_read_earlier_columns():
    x = random((33, 64)) * 4
    f = check(lambda t: torch.var(t, 0), (x,))
    assert_columns(f)
    f = check(lambda t: torch.softmax(t, 0), (with_edges((33, 64), scale=10),))
    assert_columns(f)
    f = check(lambda t: (t - t.mean(0)) / (t.std(0) + 1), (x,))


def test_long_columns_accumulate_in_double():
    # 70000 rows: a float32 sum that long accumulates in float64 (as the row form does)
    x = random((70000, 32)) + 100
    f = check(lambda t: t.sum(0), (x,))
    assert_columns(f)


def test_row_form_stays_where_rows_are_contiguous():
    f = check(lambda t: t.sum(1), (random((64, 48)),))
    assert not column_kernels(f)
    # kept width under a vector: the row form stays
    f = check(lambda t: t.sum(0), (random((64, 3)),))
    assert not column_kernels(f)


def test_empty_and_size_one():
    check(lambda t: t.sum(0), (random((0, 32)),))
    check(lambda t: t.amax(0), (random((1, 64)),))
    check(lambda t: t.mean(0), (random((5, 0)),))


def test_float64_columns():
    x = random((41, 24)).double()
    f = check(lambda t: t.sum(0) * t.amin(0), (x,))
    assert_columns(f)


def test_float64_softmax_of_transcendentals_over_a_column():
    # exp(tan(x)) reaches 4.7e10: the max and the value it is subtracted from, computed in two
    # loops, must be the same double (float64 math is scalar libm in every loop; libmvec's
    # vector exp differed by 1 ulp, so softmax gave 0.9999924 for eager's 1.0; fuzz seed 7138200)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 9, 17, 16, generator=g, dtype=torch.float64) * 4 - 2)
    f = check(lambda t: torch.tan(t).exp().softmax(dim=-3), (x,), rtol=1e-12, atol=1e-12)
    assert_columns(f)
    check(lambda t: torch.tan(t).exp().softmax(dim=-1), (x,), rtol=1e-12, atol=1e-12)
