"""The ATen ops autograd emits in backward passes, and the losses training needs, lowered to kiln
IR (capture/backward_ops.h) instead of running as fallback ops: each is called directly in a
compiled function under no_grad and compared with eager on random inputs (odd sizes, size-1 and
0-dim shapes, non-contiguous grads, NaN / inf / -0 / values exactly at the op's thresholds), and
one check per family that the lowered op gives autograd's own gradient.

Tolerances: float64 rtol 1e-10, atol 1e-12; float32 rtol 1e-5, atol 1e-6 (F64 / F32 below).
"""

import shutil

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import _cuda
from kiln.testing import assert_same, check, make_input, assert_no_fallbacks

aten = torch.ops.aten
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


no_fallbacks = assert_no_fallbacks


def with_edges(t, values):
    """t with `values` written over some of its elements (spread out; none for a 0-dim t)."""
    t = t.clone()
    flat = t.view(-1) if t.is_contiguous() else None
    if flat is None or t.numel() < 2:
        return t
    for k, v in enumerate(values):
        flat[(k * 7919 + 3) % flat.numel()] = v
    return t


def no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)
    return run


def emulated(fn, *args):
    """fn's CUDA program run by the CPU emulation of the CUDA built-ins (tests/python/
    cuda_emulation.py): half types, and the CUDA lowering of gathers and scatters, without a GPU."""
    if not _cuda.HAVE_CUDA_BACKEND or not _cuda.cuda_status()["nvrtc"] or shutil.which("g++") is None:
        pytest.skip("needs kiln's CUDA backend, NVRTC and g++ for the CUDA emulation")
    from cuda_emulation import emulate
    return emulate(fn, *args)


EDGES = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e30, -1e30]

# (shape of grad and x, layout of grad, layout of x): tails, size-1 dims, 0-dim, strided grads.
CASES = [((37,), "contiguous", "contiguous"), ((45, 65), "transposed", "contiguous"),
         ((3, 1, 5), "sliced", "contiguous"), ((1, 7), "contiguous", "transposed"), ((), "contiguous", "contiguous")]


def pairs(dtype, edges, scale=3.0, x_of=None):
    """(grad, x) per case: random values, x scaled to reach the ops' kinks, with the edges."""
    out = []
    gen = torch.Generator().manual_seed(7)
    for shape, g_layout, x_layout in CASES:
        g = make_input(shape, dtype, g_layout, generator=gen)
        x = with_edges(make_input(shape, dtype, "contiguous", generator=gen) * scale, edges)
        if x_layout == "transposed":
            x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        out += [g, x_of(x) if x_of else x]
    return out


def run_pairs(op, dtype, edges, **kw):
    fn = no_grad(lambda *ts: tuple(op(ts[i], ts[i + 1]) for i in range(0, len(ts), 2)))
    check(fn, pairs(dtype, edges, **kw), **TOL[dtype])
    no_fallbacks()


# Ops whose vectorised ATen kernel and scalar tail disagree on a NaN input (hardswish, hardtanh,
# elu: the tail takes another branch) are not given NaN inputs; kiln follows the vector body.
POINTWISE = {
    "threshold": (lambda g, x: aten.threshold_backward(g, x, 0.0), EDGES),
    "threshold_at_0.5": (lambda g, x: aten.threshold_backward(g, x, 0.5), EDGES + [0.5, 0.5]),
    "threshold_int": (lambda g, x: aten.threshold_backward(g, x, 1), EDGES + [1.0]),
    "gelu": (lambda g, x: aten.gelu_backward(g, x), EDGES),
    "gelu_tanh": (lambda g, x: aten.gelu_backward(g, x, approximate="tanh"), EDGES),
    "silu": (lambda g, x: aten.silu_backward(g, x), EDGES),
    "mish": (lambda g, x: aten.mish_backward(g, x), EDGES),
    "sigmoid": (lambda g, y: aten.sigmoid_backward(g, y), EDGES),
    "tanh": (lambda g, y: aten.tanh_backward(g, y), EDGES),
    "hardswish": (lambda g, x: aten.hardswish_backward(g, x), EDGES[1:] + [3.0, -3.0]),
    "hardsigmoid": (lambda g, x: aten.hardsigmoid_backward(g, x), EDGES + [3.0, -3.0]),
    "hardtanh": (lambda g, x: aten.hardtanh_backward(g, x, -1.0, 2.0), EDGES[1:] + [-1.0, 2.0]),
    "relu6": (lambda g, x: aten.hardtanh_backward(g, x, 0.0, 6.0), EDGES[1:] + [0.0, 6.0]),
    "leaky_relu": (lambda g, x: aten.leaky_relu_backward(g, x, 0.01, False), EDGES),
    "elu": (lambda g, x: aten.elu_backward(g, 1.3, 1.1, 0.7, False, x), EDGES[1:]),
    "elu_of_result": (lambda g, y: aten.elu_backward(g, 1.3, 1.1, 0.7, True, y), EDGES[1:]),
    "softplus": (lambda g, x: aten.softplus_backward(g, x, 2.0, 3.0), EDGES + [1.5]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(POINTWISE))
def test_pointwise_derivative_matches_eager(name, dtype):
    op, edges = POINTWISE[name]
    run_pairs(op, dtype, edges)


def test_half_threshold_backward_compares_in_float32():
    # bfloat16(0.1) is 0.10009765625: above the threshold 0.1 (a float32), at 0.10009765625 itself.
    x = torch.full((4,), 0.1, dtype=torch.bfloat16)
    g = make_input((4,), torch.bfloat16)
    fn = no_grad(lambda g, x: (aten.threshold_backward(g, x, 0.1), aten.threshold_backward(g, x, 0.10009765625)))
    got, ok = emulated(fn, g, x)
    assert ok and torch.equal(got[0].view(4), g) and torch.equal(got[1].view(4), torch.zeros_like(g))
    assert all(torch.equal(a.view(4), b) for a, b in zip(got, fn(g, x)))


def test_mixed_dtypes_run_eagerly():
    g, x = make_input((5, 7), torch.float32), make_input((5, 7), torch.float64)
    f = kiln.compile(no_grad(lambda g, x: aten.gelu_backward(g, x) * 2))
    assert_same(f(g, x), aten.gelu_backward(g, x) * 2)
    assert "aten.gelu_backward.default" in kiln.counters()["fallback_op_counts"]


AUTOGRAD = {
    "relu": (torch.relu, lambda g, x, y: aten.threshold_backward(g, y, 0)),
    "gelu": (F.gelu, lambda g, x, y: aten.gelu_backward(g, x)),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda g, x, y: aten.gelu_backward(g, x, approximate="tanh")),
    "silu": (F.silu, lambda g, x, y: aten.silu_backward(g, x)),
    "mish": (F.mish, lambda g, x, y: aten.mish_backward(g, x)),
    "sigmoid": (torch.sigmoid, lambda g, x, y: aten.sigmoid_backward(g, y)),
    "tanh": (torch.tanh, lambda g, x, y: aten.tanh_backward(g, y)),
    "hardswish": (F.hardswish, lambda g, x, y: aten.hardswish_backward(g, x)),
    "hardsigmoid": (F.hardsigmoid, lambda g, x, y: aten.hardsigmoid_backward(g, x)),
    "relu6": (F.relu6, lambda g, x, y: aten.hardtanh_backward(g, x, 0.0, 6.0)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda g, x, y: aten.leaky_relu_backward(g, x, 0.2, False)),
    "elu": (F.elu, lambda g, x, y: aten.elu_backward(g, 1.0, 1.0, 1.0, False, x)),
    "softplus": (lambda x: F.softplus(x, 2.0, 3.0), lambda g, x, y: aten.softplus_backward(g, x, 2.0, 3.0)),
}


def test_pointwise_derivatives_are_autograds_gradients():
    x = make_input((9, 33), torch.float64) * 4
    g = make_input((9, 33), torch.float64)
    want, outputs = [], []
    for forward, _ in AUTOGRAD.values():
        xr = x.clone().requires_grad_()
        y = forward(xr)
        want += torch.autograd.grad(y, xr, g)
        outputs.append(y.detach())
    rules = [lowered for _, lowered in AUTOGRAD.values()]
    f = kiln.compile(no_grad(lambda g, x, ys: tuple(rule(g, x, y) for rule, y in zip(rules, ys))))
    for _ in range(2):
        for name, got, w in zip(AUTOGRAD, f(g, x, outputs), want):
            assert_same(got, w, what=name, **TOL[torch.float64])
    no_fallbacks()


# ---- softmax -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_matches_eager(log, dtype):
    op = aten._log_softmax_backward_data if log else aten._softmax_backward_data
    forward = torch.log_softmax if log else torch.softmax
    cases = [((45, 65), 1, "transposed"), ((45, 65), 0, "contiguous"), ((3, 1, 37), -1, "sliced"),
             ((3, 1, 37), 1, "contiguous"), ((7,), 0, "contiguous"), ((), 0, "contiguous")]
    inputs, dims = [], []
    for shape, dim, layout in cases:
        x = with_edges(make_input(shape, dtype) * 4, [float("inf"), float("-inf"), -0.0, 30.0])
        inputs += [make_input(shape, dtype, layout), forward(x, dim)]
        dims.append(dim)
    fn = no_grad(lambda *ts: tuple(op(ts[2 * k], ts[2 * k + 1], d, dtype) for k, d in enumerate(dims)))
    check(fn, inputs, **TOL[dtype])
    no_fallbacks()


def test_softmax_backward_is_one_row_kernel():
    g, y = make_input((16, 67)), torch.softmax(make_input((16, 67)), 1)
    for op in (aten._softmax_backward_data, aten._log_softmax_backward_data):
        f = check(no_grad(lambda g, y: op(g, y, 1, torch.float32)), (g, y))
        assert len(kiln.kernels(f)) == 1, [k.name for k in kiln.kernels(f)]


def test_half_softmax_backward_of_float_grads_runs_eagerly():
    g, y = make_input((4, 9), torch.float32), torch.softmax(make_input((4, 9)), 1)
    f = kiln.compile(no_grad(lambda g, y: aten._softmax_backward_data(g, y, 1, torch.float32) * 2))
    assert_same(f(g, y), aten._softmax_backward_data(g, y, 1, torch.float32) * 2)
    no_fallbacks()


@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_is_autograds_gradient(log):
    forward = torch.log_softmax if log else torch.softmax
    op = aten._log_softmax_backward_data if log else aten._softmax_backward_data
    x, g = make_input((6, 31), torch.float64) * 3, make_input((6, 31), torch.float64)
    xr = x.clone().requires_grad_()
    y = forward(xr, 1)
    (want,) = torch.autograd.grad(y, xr, g)
    f = kiln.compile(no_grad(lambda g, y: op(g, y, 1, torch.float64)))
    assert_same(f(g, y.detach()), want, **TOL[torch.float64])
    no_fallbacks()


# ---- layer norm ----------------------------------------------------------------------------------
LN_CASES = [((5, 37), [37]), ((3, 4, 9), [4, 9]), ((2, 1, 7), [7]), ((6,), [6]), ((2, 3, 5), [2, 3, 5])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_native_layer_norm_records_mean_and_rstd(affine, dtype):
    inputs, shapes = [], []
    for shape, norm in LN_CASES:
        x = make_input(shape, dtype) * 3 + 1
        w, b = (make_input(norm, dtype), make_input(norm, dtype)) if affine else (None, None)
        inputs += [x, w, b]
        shapes.append(norm)
    fn = no_grad(lambda *ts: tuple(aten.native_layer_norm(ts[3 * k], n, ts[3 * k + 1], ts[3 * k + 2], 1e-5)
                                   for k, n in enumerate(shapes)))
    check(fn, inputs, **TOL[dtype])
    no_fallbacks()


def test_layer_norm_statistics_of_constant_rows():
    x = torch.full((3, 8), 123.456)
    x[1] = make_input((8,))
    check(no_grad(lambda x: aten.native_layer_norm(x, [8], None, None, 1e-5)), (x,), **TOL[torch.float32])
    no_fallbacks()


def test_layer_norm_statistics_share_the_forward_row_kernel():
    x, w, b = make_input((16, 67)), make_input((67,)), make_input((67,))
    y_only = check(no_grad(lambda x, w, b: aten.native_layer_norm(x, [67], w, b, 1e-5)[0]), (x, w, b))
    all3 = check(no_grad(lambda x, w, b: aten.native_layer_norm(x, [67], w, b, 1e-5)), (x, w, b))
    assert len(kiln.kernels(all3)) == len(kiln.kernels(y_only)) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_native_layer_norm_backward_matches_eager(affine, dtype):
    inputs, specs = [], []
    for shape, norm in LN_CASES:
        x = make_input(shape, dtype) * 3 + 1
        w, b = (make_input(norm, dtype), make_input(norm, dtype)) if affine else (None, None)
        _, mean, rstd = aten.native_layer_norm(x, norm, w, b, 1e-5)
        g = make_input(shape, dtype, "transposed" if len(shape) > 1 else "sliced")
        inputs += [g, x, mean, rstd, w, b]
        specs.append((norm, [True, affine, affine]))
    fn = no_grad(lambda *ts: tuple(aten.native_layer_norm_backward(*ts[6 * k:6 * k + 2], n, *ts[6 * k + 2:6 * k + 6], m)
                                   for k, (n, m) in enumerate(specs)))
    check(fn, inputs, **TOL[dtype])
    no_fallbacks()


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True],
                                  [False, True, True], [True, True, False]])
def test_native_layer_norm_backward_computes_only_what_the_mask_asks(mask):
    x, w, b = make_input((7, 3, 11)), make_input((3, 11)), make_input((3, 11))
    _, mean, rstd = aten.native_layer_norm(x, [3, 11], w, b, 1e-5)
    g = make_input((7, 3, 11))
    fn = no_grad(lambda g, x, m, r, w, b: aten.native_layer_norm_backward(g, x, [3, 11], m, r, w, b, mask))
    check(fn, (g, x, mean, rstd, w, b), **TOL[torch.float32])
    no_fallbacks()


def test_native_layer_norm_backward_with_edge_values():
    x = with_edges(make_input((6, 17), torch.float64) * 3, [float("inf"), float("nan"), -0.0, 1e30])
    x[3] = 2.5  # a constant row: rstd = 1 / sqrt(eps)
    w, b, g = make_input((17,), torch.float64), make_input((17,), torch.float64), make_input((6, 17), torch.float64)
    _, mean, rstd = aten.native_layer_norm(x, [17], w, b, 1e-5)
    fn = no_grad(lambda g, x, m, r, w, b: aten.native_layer_norm_backward(g, x, [17], m, r, w, b, [True] * 3))
    check(fn, (g, x, mean, rstd, w, b), **TOL[torch.float64])
    no_fallbacks()


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_forward_and_backward_give_autograds_gradients(affine):
    dt = torch.float64
    x, g = make_input((4, 5, 23), dt) * 2 + 0.5, make_input((4, 5, 23), dt)
    w, b = (make_input((5, 23), dt), make_input((5, 23), dt)) if affine else (None, None)
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = F.layer_norm(leaves[0], [5, 23], *(leaves[1:] if affine else [None, None]), eps=1e-5)
    want = torch.autograd.grad(y, leaves, g)

    def lowered(g, x, w, b):
        _, mean, rstd = aten.native_layer_norm(x, [5, 23], w, b, 1e-5)
        grads = aten.native_layer_norm_backward(g, x, [5, 23], mean, rstd, w, b, [True, affine, affine])
        return tuple(t for t in grads if t is not None)
    f = kiln.compile(no_grad(lowered))
    assert_same(f(g, x, w, b), tuple(want), **TOL[dt])
    assert_same(f(g, x, w, b), tuple(want), **TOL[dt])
    no_fallbacks()


# ---- nll_loss ------------------------------------------------------------------------------------
def nll_inputs(shape, dtype, weighted, ignore=-100, seed=0):
    """Log-probabilities over dim 1 (dim 0 for a 1-D input), targets with some ignored."""
    gen = torch.Generator().manual_seed(seed)
    cdim = 0 if len(shape) == 1 else 1
    lp = torch.log_softmax(make_input(shape, dtype, generator=gen) * 3, cdim)
    tshape = shape[:cdim] + shape[cdim + 1:]
    t = torch.randint(0, shape[cdim], tshape, generator=gen)
    if t.numel() > 2:
        t.view(-1)[1] = ignore
    w = make_input((shape[cdim],), dtype, low=0.1, high=2.0, generator=gen) if weighted else None
    return lp, t, w


NLL_SHAPES = [(9, 5), (1, 3), (7,), (2, 4, 3, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_nll_loss_forward_and_backward_match_eager(reduction, weighted, dtype):
    inputs, kinds = [], []
    for shape in NLL_SHAPES:
        lp, t, w = nll_inputs(shape, dtype, weighted)
        out, total = (aten.nll_loss2d_forward if len(shape) == 4 else aten.nll_loss_forward)(lp, t, w, reduction, -100)
        inputs += [lp, t, w, make_input(out.shape, dtype), total]
        kinds.append(len(shape) == 4)

    def fn(*ts):
        res = []
        for k, two_d in enumerate(kinds):
            lp, t, w, g, total = ts[5 * k:5 * k + 5]
            fwd, bwd = (aten.nll_loss2d_forward, aten.nll_loss2d_backward) if two_d else \
                (aten.nll_loss_forward, aten.nll_loss_backward)
            res += [*fwd(lp, t, w, reduction, -100), bwd(g, lp, t, w, reduction, -100, total)]
        return tuple(res)
    check(no_grad(fn), inputs, **TOL[dtype])
    no_fallbacks()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_mse_loss_forward_and_backward_match_eager(reduction, dtype):
    shapes = [(37,), (45, 65), (1, 3, 1)]
    inputs = []
    for shape in shapes:
        x, t = make_input(shape, dtype), with_edges(make_input(shape, dtype), [0.0, -0.0, 1e30])
        out = aten.mse_loss(x, t, reduction)
        inputs += [x, t, make_input(out.shape, dtype)]

    def fn(*ts):
        res = []
        for k in range(len(shapes)):
            x, t, g = ts[3 * k:3 * k + 3]
            res += [aten.mse_loss(x, t, reduction), aten.mse_loss_backward(g, x, t, reduction)]
        return tuple(res)
    tol = dict(TOL[dtype], rtol=1e-4) if dtype == torch.float32 else TOL[dtype]  # float32 sums round
    check(no_grad(fn), inputs, **tol)
    no_fallbacks()


def test_mse_loss_gives_autograds_gradient():
    x = make_input((9, 17), torch.float64).requires_grad_()
    t = make_input((9, 17), torch.float64)
    fk = kiln.compile(lambda x, t: F.mse_loss(x, t))
    for _ in range(2):
        want, = torch.autograd.grad(F.mse_loss(x, t), [x])
        got, = torch.autograd.grad(fk(x, t), [x])
        torch.testing.assert_close(got, want, **TOL[torch.float64])
    no_fallbacks()


def test_nll_loss_with_an_ignore_index_in_range_and_all_targets_ignored():
    lp, t, w = nll_inputs((8, 4), torch.float64, True, ignore=2)
    t[::3] = 2
    ignored = torch.full((8,), 2)

    def fn(lp, t, w, ignored):
        res = []
        for target in (t, ignored):
            for red in (0, 1, 2):
                out, total = aten.nll_loss_forward(lp, target, w, red, 2)
                res += [out, total, aten.nll_loss_backward(torch.ones_like(out), lp, target, w, red, 2, total)]
        return tuple(res)
    check(no_grad(fn), (lp, t, w, ignored), **TOL[torch.float64])
    no_fallbacks()


def test_nll_loss_of_edge_values():
    lp = with_edges(make_input((9, 6), torch.float64), [float("-inf"), float("nan"), -0.0, 0.0, float("inf")])
    t = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    w = torch.tensor([1.0, 0.0, -0.0, 2.0, float("inf"), 0.5], dtype=torch.float64)
    fn = no_grad(lambda lp, t, w: tuple(x for red in (0, 1, 2) for x in aten.nll_loss_forward(lp, t, w, red, -100)))
    check(fn, (lp, t, w), **TOL[torch.float64])
    no_fallbacks()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_nll_loss_target_out_of_range_raises_as_eager(backward, weighted):
    lp, t, w = nll_inputs((6, 5), torch.float32, weighted)
    total = aten.nll_loss_forward(lp, t, w, 1, -100)[1]
    g = torch.ones(())

    def fn(lp, t, w, g, total):
        if backward:
            return aten.nll_loss_backward(g, lp, t, w, 1, -100, total) * 2
        return aten.nll_loss_forward(lp, t, w, 1, -100)[0] * 2
    f = kiln.compile(no_grad(fn))
    f(lp, t, w, g, total)
    assert_same(f(lp, t, w, g, total), fn(lp, t, w, g, total))
    no_fallbacks()
    for bad in (5, -3):
        t_bad = t.clone()
        t_bad[4] = bad
        with pytest.raises(IndexError):
            fn(lp, t_bad, w, g, total)
        with pytest.raises(IndexError):
            f(lp, t_bad, w, g, total)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_gives_autograds_gradient(weighted, reduction):
    lp, t, w = nll_inputs((11, 7), torch.float64, weighted)
    lpr = lp.clone().requires_grad_()
    loss = F.nll_loss(lpr, t, w, reduction=reduction)
    g = make_input(loss.shape, torch.float64)
    (want,) = torch.autograd.grad(loss, lpr, g)
    red = {"none": 0, "mean": 1, "sum": 2}[reduction]

    def lowered(g, lp, t, w):
        out, total = aten.nll_loss_forward(lp, t, w, red, -100)
        return out, aten.nll_loss_backward(g, lp, t, w, red, -100, total)
    f = kiln.compile(no_grad(lowered))
    assert_same(f(g, lp, t, w), (loss.detach(), want), **TOL[torch.float64])
    assert_same(f(g, lp, t, w), (loss.detach(), want), **TOL[torch.float64])
    no_fallbacks()


# ---- embedding, slice and select -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_dense_backward_matches_eager(dtype):
    gen = torch.Generator().manual_seed(3)
    idx2 = torch.randint(0, 10, (5, 7), generator=gen)  # duplicates accumulate in order
    idx1 = torch.randint(0, 4, (9,), generator=gen).int()
    g2, g1 = make_input((5, 7, 13), dtype, "transposed"), make_input((9, 6), dtype)
    g2 = with_edges(g2.contiguous(), [float("nan"), float("inf"), -0.0])

    def fn(g2, idx2, g1, idx1):
        return (aten.embedding_dense_backward(g2, idx2, 10, 3, False),
                aten.embedding_dense_backward(g2, idx2, 12, -1, False),
                aten.embedding_dense_backward(g1, idx1, 4, 0, False))
    check(no_grad(fn), (g2, idx2, g1, idx1), **TOL[dtype])
    no_fallbacks()


def test_embedding_dense_backward_drops_indices_out_of_range_as_eager():
    # ATen's CPU kernel adds only rows whose index lies in [0, num_weights) and is not padding.
    g = make_input((6, 5))
    idx = torch.tensor([0, 7, -1, 2, -4, 2])
    check(no_grad(lambda g, i: aten.embedding_dense_backward(g, i, 6, -1, False)), (g, idx), **TOL[torch.float32])
    no_fallbacks()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_scaled_by_frequency(dtype):
    g, idx = make_input((3, 5, 4), dtype), torch.tensor([[1, 1, 0, 2, 1], [3, 3, 0, 1, 4], [4, 1, 2, 2, 0]])
    fn = no_grad(lambda g, i: (aten.embedding_dense_backward(g, i, 6, 0, True),
                               aten.embedding_dense_backward(g, i, 5, -1, True)))
    check(fn, (g, idx), **TOL[dtype])
    no_fallbacks()


def test_embedding_backward_is_autograds_gradient():
    weight, idx = make_input((11, 6), torch.float64), torch.randint(0, 11, (4, 5))
    wr = weight.clone().requires_grad_()
    g = make_input((4, 5, 6), torch.float64)
    want = [torch.autograd.grad(F.embedding(idx, wr, padding_idx=2, scale_grad_by_freq=s), wr, g)[0]
            for s in (False, True)]
    f = kiln.compile(no_grad(lambda g, i: [aten.embedding_dense_backward(g, i, 11, 2, s) for s in (False, True)]))
    assert_same(f(g, idx), want, **TOL[torch.float64])
    no_fallbacks()


@pytest.mark.parametrize("dtype", DTYPES)
def test_slice_and_select_backward_match_eager(dtype):
    g1, g2, g3 = make_input((5, 37), dtype, "transposed"), make_input((5, 7), dtype), make_input((4,), dtype)

    def fn(g1, g2, g3):
        return (aten.slice_backward(g1, [5, 80], 1, 3, 77, 2), aten.slice_backward(g2, [5, 7], -1, 0, 2**63 - 1, 1),
                aten.select_backward(g2, [5, 4, 7], 1, -2), aten.select_backward(g3, [4, 1], 1, 0))
    check(no_grad(fn), (g1, g2, g3), **TOL[dtype])
    no_fallbacks()


def test_slice_and_select_backward_are_autograds_gradients():
    x = make_input((6, 41), torch.float64)
    xr = x.clone().requires_grad_()
    a, b = xr[:, 3:40:3], xr.select(1, -5)
    ga, gb = make_input(a.shape, torch.float64), make_input(b.shape, torch.float64)
    want = torch.autograd.grad((a, b), xr, (ga, gb))[0]
    f = kiln.compile(no_grad(lambda ga, gb: aten.slice_backward(ga, [6, 41], 1, 3, 40, 3)
                             + aten.select_backward(gb, [6, 41], 1, -5)))
    assert_same(f(ga, gb), want, **TOL[torch.float64])
    no_fallbacks()


# ---- half types and the CUDA lowering (emulated: the CPU code generator has no half types) -------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_rules_compute_in_float32_and_round_once(dtype):
    """As eager's CUDA kernels (and its CPU ones for bfloat16): the rule in float32, one rounding."""
    g, x = make_input((5, 37), dtype), with_edges(make_input((5, 37), dtype) * 3, EDGES)
    y = torch.softmax(x.float(), 1).to(dtype)
    ops = [POINTWISE[n][0] for n in ("threshold", "gelu", "gelu_tanh", "silu", "mish", "tanh", "hardsigmoid")]
    fn = no_grad(lambda g, x, y: tuple(op(g, x) for op in ops) + (aten._softmax_backward_data(g, y, 1, dtype),))
    got, ok = emulated(fn, g, x, y)
    assert ok
    assert_same([t.view(w.shape) for t, w in zip(got, fn(g, x, y))], list(fn(g, x, y)))


def test_half_layer_norm_statistics_and_backward():
    x, w = make_input((6, 33), torch.bfloat16) * 3, make_input((33,), torch.bfloat16)
    x[2] = 1.5  # a constant row
    g = make_input((6, 33), torch.bfloat16)

    def fn(g, x, w):
        y, mean, rstd = aten.native_layer_norm(x, [33], w, None, 1e-5)
        return (y, mean, rstd) + tuple(aten.native_layer_norm_backward(g, x, [33], mean, rstd, w, None,
                                                                      [True, True, False])[:2])
    got, ok = emulated(no_grad(fn), g, x, w)
    want = fn(g, x, w)
    assert ok
    assert_same([t.view(e.shape) for t, e in zip(got, want)], list(want))


def test_cuda_lowering_of_losses_and_embedding_backward():
    lp, t, w = nll_inputs((9, 5), torch.float32, True)
    ge, idx = make_input((4, 6, 7)), torch.randint(0, 5, (4, 6))  # many duplicates: folded atomically

    def fn(lp, t, w, ge, idx):
        out, total = aten.nll_loss_forward(lp, t, w, 1, -100)
        return (out, total, aten.nll_loss_backward(torch.ones_like(out), lp, t, w, 1, -100, total),
                aten.embedding_dense_backward(ge, idx, 5, 1, False))
    got, ok = emulated(no_grad(fn), lp, t, w, ge, idx)
    want = fn(lp, t, w, ge, idx)
    assert ok
    assert_same([r.view(e.shape) for r, e in zip(got, want)], list(want), **TOL[torch.float32])


def test_empty_tensors():
    e, w, t = make_input((0, 5)), make_input((5,)), torch.zeros(0, dtype=torch.int64)
    _, mean, rstd = aten.native_layer_norm(e, [5], w, w, 1e-5)

    def fn(e, w, t, mean, rstd):
        res = [aten.gelu_backward(e, e), aten._softmax_backward_data(e, e, 0, torch.float32),
               *aten.native_layer_norm(e, [5], w, w, 1e-5),
               *aten.native_layer_norm_backward(e, e, [5], mean, rstd, w, w, [True, True, True]),
               aten.embedding_dense_backward(e, t, 4, -1, False), aten.slice_backward(e, [3, 5], 0, 3, 3, 1)]
        for red in (0, 1, 2):  # mean over no targets is nan, as eager's
            out, total = aten.nll_loss_forward(e, t, None, red, -100)
            res += [out, total, aten.nll_loss_backward(torch.ones_like(out), e, t, None, red, -100, total)]
        return tuple(res)
    check(no_grad(fn), (e, w, t, mean, rstd))
    no_fallbacks()


def test_every_backward_kernel_compiles_to_ptx():
    """NVRTC compiles each kernel of every rule, float32 and float64 (no GPU needed)."""
    if not _cuda.HAVE_CUDA_BACKEND or not _cuda.cuda_status()["nvrtc"]:
        pytest.skip("needs kiln's CUDA backend and NVRTC")
    for dtype in DTYPES:
        g, x = make_input((6, 37), dtype), make_input((6, 37), dtype) * 3
        w = make_input((37,), dtype)
        lp, t, cw = nll_inputs((6, 37), dtype, True)
        idx = torch.randint(0, 9, (6,))

        def fn(g, x, w, lp, t, cw, idx):
            res = [op(g, x) for op, _ in POINTWISE.values()]
            res += [aten._softmax_backward_data(g, x, 1, dtype), aten._log_softmax_backward_data(g, x, 0, dtype)]
            _, mean, rstd = aten.native_layer_norm(x, [37], w, w, 1e-5)
            res += list(aten.native_layer_norm_backward(g, x, [37], mean, rstd, w, w, [True, True, True]))
            out, total = aten.nll_loss_forward(lp, t, cw, 1, -100)
            res += [out, aten.nll_loss_backward(torch.ones_like(out), lp, t, cw, 1, -100, total)]
            res += [aten.embedding_dense_backward(g, idx, 9, 0, True), aten.select_backward(g, [6, 2, 37], 1, 1)]
            return tuple(res)
        args = (g, x, w, lp, t, cw, idx)
        assert not _cuda.trace_graph(no_grad(fn), args).fallbacks  # traced for the CUDA target
        kernels = kiln.codegen(no_grad(fn), *args, target="cuda")
        assert kernels
        for k in kernels:
            assert k.target == "cuda" and k.asm and ".entry" in k.asm, k.name
