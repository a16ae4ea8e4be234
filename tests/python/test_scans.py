"""Note [Scans] (passes/lower_to_loops.cpp): cumsum and cumprod as one kernel with a running
reduction along the scanned dim, folded in eager's accumulation dtype (float64 for float32), so
the results equal eager's bit for bit."""

import pytest
import torch

import kiln
from kiln.testing import assert_same, check, make_input

EXACT = dict(atol=0, rtol=0)


def _no_fallbacks():
    c = kiln.counters()
    assert not c["fallback_op_counts"] and c["eager_calls"] == 0, c


@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_float_scans_equal_eager_bit_for_bit(op, dim, layout):
    x = make_input((37, 53), layout=layout, low=0.5 if op == "cumprod" else -1.5, high=1.5)
    check(lambda a: getattr(a * 2, op)(dim) - 1, (x,), **EXACT)
    _no_fallbacks()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float64])
def test_scans_of_other_dtypes(dtype):
    # integers and bools scan into int64 unless a dtype is given, as eager does
    x = make_input((6, 40), dtype)
    check(lambda a: a.cumsum(1), (x,), **EXACT)
    check(lambda a: torch.cumsum(a, 0, dtype=torch.float64) * 3, (x,), **EXACT)
    if dtype != torch.bool:
        check(lambda a: (a % 3).cumprod(1), (x,), **EXACT)
    _no_fallbacks()


def test_position_ids_from_an_attention_mask():
    # transformers' RoBERTa / OPT / Bloom: positions counted over the unpadded tokens
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, 15:] = 0
    f = check(lambda m, ids: (m.cumsum(-1) * m + 1).long() + ids, (mask, torch.randint(0, 9, (3, 20))), **EXACT)
    assert [k.name for k in kiln.kernels(f)] == ["k0_scan", "k1_mul_add"]  # the scan, then what reads it
    _no_fallbacks()


def test_edge_values():
    x = torch.tensor([[-0.0, 1e30, 1e30, -1e30, float("inf"), 1.0, float("-inf"), float("nan"), 2.0],
                      [0.0, -0.0, 3e38, 3e38, -3e38, 1e-45, -1e-45, 5.0, -5.0]])
    check(lambda a: a.cumsum(1), (x,), **EXACT)
    check(lambda a: a.cumprod(1), (x,), **EXACT)
    check(lambda a: a.cumsum(0) + a.cumprod(0), (x,), **EXACT)
    _no_fallbacks()


@pytest.mark.parametrize("shape, dim", [((5, 1, 4), 1), ((1,), 0), ((0, 7), 1), ((7, 0), 1), ((3, 4, 5), 1)])
def test_shapes(shape, dim):
    check(lambda a: a.cumsum(dim) * 2, (make_input(shape),), **EXACT)
    _no_fallbacks()


def test_a_long_scan_split_across_threads_by_rows():
    # many rows, each folded by one thread in order: no row's order changes with the threads
    x = make_input((512, 3000))
    for threads in (1, 2):
        kiln.config.set("num_threads", threads)
        try:
            check(lambda a: (a + 1).cumsum(1), (x,), **EXACT)
        finally:
            kiln.config.set("num_threads", 0)
    f = kiln.compile(lambda a: (a + 1).cumsum(1))
    f(x)
    ir = kiln.kernels(f)[0].loop_ir
    assert "0..512 (parallel)" in ir and "0..3000 (serial)" in ir and "running sum<float64>" in ir, ir
    _no_fallbacks()


def test_zero_dim_runs_eagerly_inside_the_program():
    check(lambda a: (a * 2).cumsum(0), (make_input(()),), **EXACT, expect_compiled=False)
