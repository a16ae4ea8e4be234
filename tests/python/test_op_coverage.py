"""ATen ops that used to run as eager fallback ops inside compiled programs, now lowered:
isinf / isfinite / isposinf / isneginf / sgn, lerp, addcmul, addcdiv, aminmax, linspace,
select_scatter and integer pow with a tensor exponent. Each is compared with eager on random
inputs with edge values (inf, nan, -0, large), broadcasting, non-contiguous views and odd
sizes; kiln.testing.check asserts the second call is a compiled cache hit, and every test
asserts that the op never ran as a fallback op.
"""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, check, make_input

FLOATS = (torch.float32, torch.float64)
INTS = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def dtype_id(dt):
    return str(dt).replace("torch.", "")


def assert_lowered(*names):
    ops = kiln.counters()["fallback_op_counts"]
    for name in names:
        assert not any(name in str(op) for op in ops), f"{name} ran as a fallback op: {ops}"


def specials(shape, dtype, layout="contiguous", scale=1.0):
    """A random float tensor with inf, -inf, nan, -0, 0 and large values sprinkled in."""
    x = make_input(shape, dtype, layout=layout)
    if x.numel() == 0:
        return x
    base = x if layout == "contiguous" else x._base if x._base is not None else x
    flat = base.view(-1)
    vals = [float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 3e38 if dtype == torch.float32 else 1e300,
            -1e30, 0.5, -0.5, 1.0]
    for k, v in enumerate(vals):
        flat[(k * 7) % flat.numel()] = v
    return x * scale if scale != 1.0 else x


def float_sweep(dtype):
    return [specials(s, dtype) for s in [(), (1,), (7,), (33,), (45, 65), (0, 3)]] + [
        specials((45, 65), dtype, layout=l) for l in ("transposed", "sliced", "broadcast")]


# ---- isinf and friends, sgn -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + (torch.float16, torch.bfloat16), ids=dtype_id)
def test_isinf_family_floats(dtype):
    xs = float_sweep(dtype)
    fn = lambda *xs: tuple(t for x in xs for t in (torch.isinf(x), torch.isfinite(x), torch.isposinf(x),
                                                    torch.isneginf(x), torch.sgn(x), x.sgn() * 2))
    check(fn, xs)
    assert_lowered("isinf", "isfinite", "isposinf", "isneginf", "sgn")


@pytest.mark.parametrize("dtype", INTS + (torch.bool,), ids=dtype_id)
def test_isinf_family_ints(dtype):
    xs = [make_input(s, dtype) for s in [(), (7,), (45, 65)]] + [make_input((45, 65), dtype, layout="transposed")]
    fn = lambda *xs: tuple(t for x in xs for t in (torch.isinf(x), torch.isfinite(x), torch.isposinf(x),
                                                    torch.isneginf(x)))
    check(fn, xs)
    assert_lowered("isinf", "isfinite", "isposinf", "isneginf")


def test_isinf_fused_with_arithmetic():
    x = specials((9, 33), torch.float32)
    check(lambda x: torch.where(torch.isfinite(x), x * 2, 0.0) + torch.isinf(x).float(), (x,))
    assert_lowered("isinf", "isfinite")


# ---- lerp ---------------------------------------------------------------------------------------
def _lerp_close(dtype):
    # Note [lerp] (capture/pointwise_ops.cpp): eager's fma, bit for bit.
    return dict(rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_lerp_scalar(dtype):
    a = make_input((45, 65), dtype)
    b = make_input((45, 65), dtype, layout="transposed")
    c = make_input((3, 1, 5), dtype)
    d = make_input((4, 5), dtype, layout="broadcast")
    s = specials((33,), dtype)
    t = specials((33,), dtype).flip(0)
    fn = lambda a, b, c, d, s, t: (torch.lerp(a, b, 0.3), torch.lerp(a, b, 0.5), torch.lerp(a, b, 0.75),
                                   torch.lerp(c, d, -1.5), torch.lerp(c, d, 2), torch.lerp(s, t, 0.25),
                                   torch.lerp(s, t, 0.9), torch.lerp(s, t, float("nan")),
                                   torch.lerp(s, t, float("inf")))
    check(fn, (a, b, c, d, s, t), **_lerp_close(dtype))
    assert_lowered("lerp")


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_lerp_tensor(dtype):
    a = make_input((45, 65), dtype)
    b = make_input((45, 65), dtype, layout="sliced")
    w = make_input((65,), dtype, low=-1, high=2)
    s = specials((1023,), dtype)
    t = make_input((1023,), dtype)
    ws = specials((1023,), dtype).flip(0)
    w0 = torch.tensor(0.6, dtype=dtype)
    fn = lambda a, b, w, s, t, ws, w0: (torch.lerp(a, b, w), torch.lerp(s, t, ws), torch.lerp(t, s, ws),
                                        torch.lerp(a, b, w0), torch.lerp(a[:7, :9], b[:7, :9], w[:9]))
    check(fn, (a, b, w, s, t, ws, w0), **_lerp_close(dtype))
    assert_lowered("lerp")


def test_lerp_float32_matches_eager_bits_on_the_vector_body():
    # 1024 elements: all in eager's vectorised body (fma).
    a, b, w = (torch.randn(1024) * 100 for _ in range(3))
    f = kiln.compile(lambda a, b, w: (torch.lerp(a, b, w), torch.lerp(a, b, 0.3)))
    f(a, b, w)
    got = f(a, b, w)
    want = (torch.lerp(a, b, w), torch.lerp(a, b, 0.3))
    mismatched = sum(int((g != e).sum()) for g, e in zip(got, want))
    assert mismatched == 0, mismatched
    assert_lowered("lerp")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=dtype_id)
def test_lerp_half(dtype):
    a, b, w = make_input((7, 33), dtype), make_input((7, 33), dtype), make_input((33,), dtype)
    check(lambda a, b, w: (torch.lerp(a, b, w), torch.lerp(a, b, 0.3)), (a, b, w))
    assert_lowered("lerp")


def test_fused_multiply_adds_over_a_kept_softmax_exponential():
    # A row kernel keeps exp(x - max) for its store phase (Note [Reusing a reduced value]),
    # rewriting the stored expression around it: Fma nodes included.
    x, y, z = make_input((8, 33)), make_input((8, 33)), make_input((33,))
    check(lambda x, y, z: (torch.addcmul(y, F.softmax(x, -1), z, value=0.5), torch.lerp(F.softmax(x, -1), y, z),
                           torch.lerp(y, torch.exp(x - x.amax(-1, keepdim=True)), 0.3)), (x, y, z))
    assert_lowered("lerp", "addcmul")


# ---- addcmul / addcdiv --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_addcmul_addcdiv_floats(dtype):
    x = specials((45, 65), dtype)
    t1 = make_input((45, 65), dtype, layout="transposed")
    t2 = make_input((65,), dtype, nonzero=True)
    u = specials((3, 1, 5), dtype)
    v = make_input((4, 5), dtype, layout="broadcast")
    fn = lambda x, t1, t2, u, v: (torch.addcmul(x, t1, t2), torch.addcmul(x, t1, t2, value=0.3),
                                  torch.addcdiv(x, t1, t2), torch.addcdiv(x, t1, t2, value=-2.5),
                                  torch.addcmul(u, v, u, value=3), torch.addcdiv(v, u, v, value=1e-3),
                                  torch.addcdiv(u, u, u))
    check(fn, (x, t1, t2, u, v), rtol=0, atol=0)  # eager's formula and order: bit for bit
    assert_lowered("addcmul", "addcdiv")


@pytest.mark.parametrize("dtype", (torch.int32, torch.int64, torch.int8), ids=dtype_id)
def test_addcmul_ints(dtype):
    x, a, b = make_input((7, 9), dtype), make_input((9,), dtype), make_input((7, 9), dtype, layout="transposed")
    check(lambda x, a, b: (torch.addcmul(x, a, b), torch.addcmul(x, a, b, value=-3)), (x, a, b))
    assert_lowered("addcmul")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=dtype_id)
def test_addcmul_addcdiv_half(dtype):
    x, a, b = make_input((7, 33), dtype), make_input((33,), dtype), make_input((7, 33), dtype, nonzero=True)
    check(lambda x, a, b: (torch.addcmul(x, a, b, value=0.1), torch.addcdiv(x, a, b, value=0.7)), (x, a, b),
          rtol=0, atol=0)
    assert_lowered("addcmul", "addcdiv")


# ---- aminmax ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + (torch.int32, torch.int64, torch.uint8), ids=dtype_id)
def test_aminmax(dtype):
    x = specials((17, 33), dtype) if dtype.is_floating_point else make_input((17, 33), dtype)
    y = make_input((45, 65), dtype, layout="transposed")
    z = make_input((), dtype)

    def fn(x, y, z):
        return (torch.aminmax(x), torch.aminmax(x, dim=1), torch.aminmax(x, dim=0, keepdim=True),
                torch.aminmax(y, dim=-1), torch.aminmax(y, keepdim=True), torch.aminmax(z))
    check(fn, (x, y, z))
    assert_lowered("aminmax")


# ---- linspace -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + (torch.int64, torch.int32, torch.int8), ids=dtype_id)
def test_linspace(dtype):
    def fn(x):
        return (torch.linspace(0, 1, 7, dtype=dtype) + x[0], torch.linspace(-3.3, 17.9, 1001, dtype=dtype),
                torch.linspace(5, -5, 10, dtype=dtype), torch.linspace(2.5, 2.5, 3, dtype=dtype),
                torch.linspace(1, 100, 1, dtype=dtype), torch.linspace(-100, 100, 33, dtype=dtype) * x[1],
                torch.linspace(0, 1e6 if dtype != torch.int8 else 120, 999, dtype=dtype))
    check(fn, (make_input((2,), dtype, low=0, high=2),), rtol=0, atol=0)
    assert_lowered("linspace")


def test_linspace_default_dtype_and_extremes():
    def fn(x):
        return (torch.linspace(0, 1, 100) * x, torch.linspace(float("-inf"), 0, 5) + x[:5],
                torch.linspace(-1e38, 3e38, 100) + x, torch.linspace(1 / 3, 2 / 3, 100, dtype=torch.float64))
    check(fn, (make_input((100,), torch.float32),), rtol=0, atol=0)
    assert_lowered("linspace")


# ---- select_scatter -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + (torch.int64, torch.bool), ids=dtype_id)
def test_select_scatter(dtype):
    x = make_input((5, 6, 7), dtype)
    s0, s1, s2 = make_input((6, 7), dtype), make_input((5, 7), dtype, layout="transposed"), make_input((5, 6), dtype)

    def fn(x, s0, s1, s2):
        return (torch.select_scatter(x, s0, 0, 2), torch.select_scatter(x, s1, 1, -1),
                torch.select_scatter(x * 1, s2, 2, 0), torch.select_scatter(x[:, :, 3], s2[:, 0], 1, 5))
    check(fn, (x, s0, s1, s2))
    assert_lowered("select_scatter")


# ---- integer pow with a tensor exponent ---------------------------------------------------------
@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
def test_int_pow_tensor_exponent(dtype):
    info = torch.iinfo(dtype)
    lo = max(info.min, -9)
    x = make_input((257,), dtype, low=lo, high=9)
    e = make_input((257,), dtype, low=0 if dtype == torch.uint8 else -5, high=min(info.max, 70))
    bases = torch.tensor([0, 1, 2, 3, 7, -1, -2, -3, info.max, info.min], dtype=torch.int64).clamp(info.min, info.max)
    exps = torch.tensor([0, 1, 2, 3, 31, 62, 63, 64, 100, -1, -2, -3, info.max, info.min], dtype=torch.int64)
    bb = bases.view(-1, 1).expand(-1, exps.numel()).to(dtype)
    ee = exps.clamp(info.min, info.max).view(1, -1).expand(bases.numel(), -1).to(dtype)
    fn = lambda x, e, bb, ee: (x ** e, torch.pow(bb, ee), 2 ** e, torch.pow(x.view(257, 1)[:5], e[:9]))
    check(fn, (x, e, bb.contiguous(), ee.t().contiguous().t()))
    assert_lowered("pow")


def test_int_pow_mixed_dtypes_and_scalar_exponents():
    x = make_input((33,), torch.int8, low=-5, high=5)
    e = make_input((33,), torch.int64, low=0, high=40)
    check(lambda x, e: (x ** e, x ** 70, x ** 40 + 1, torch.pow(3, e)), (x, e))
    assert_lowered("pow")


# ---- adaptive pooling with windows of different sizes -----------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_adaptive_pools_uneven_windows(dtype):
    x = specials((2, 3, 11, 13), dtype)
    xt = make_input((2, 3, 13, 11), dtype, layout="transposed")
    v = specials((1, 2, 5, 7, 9), dtype)

    def fn(x, xt, v):
        return (F.adaptive_avg_pool2d(x, (5, 4)), F.adaptive_avg_pool2d(x, (3, 13)), F.adaptive_avg_pool2d(x, 7),
                F.adaptive_avg_pool2d(x[0], (6, 5)), F.adaptive_max_pool2d(x, (5, 4)),
                *F.adaptive_max_pool2d(x, (4, 6), return_indices=True), *F.adaptive_max_pool2d(xt, 5, True),
                F.adaptive_avg_pool2d(xt, (4, 3)), F.adaptive_avg_pool3d(v, (2, 3, 4)),
                *F.adaptive_max_pool3d(v, (3, 2, 5), return_indices=True), F.adaptive_avg_pool1d(x[0], 5))
    check(fn, (x, xt, v), rtol=0, atol=0)
    assert_lowered("adaptive")


# ---- index_put with integer indices ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + (torch.int64, torch.int32), ids=dtype_id)
def test_index_put_integer_indices(dtype):
    x = make_input((5, 6, 7), dtype)
    xt = make_input((6, 5), dtype, layout="transposed")
    i = torch.tensor([4, 0, -2])
    j = torch.tensor([[1], [4]], dtype=torch.int32)  # (the check permutes every input, indices too)
    dup = torch.tensor([1, 3, 1, 1, 0])
    v = make_input((7,), dtype)

    def fn(x, xt, i, j, dup, v):
        a = x.index_put((i,), v)
        b = x.index_put((i, j), v, accumulate=True)
        c = x.index_put((dup,), x * 2 + v, accumulate=True)  # duplicates: summed in index order
        y = x * 1
        y[:, i] = 3
        y[i, 2, 3] += torch.arange(3).to(dtype)
        z = x.clone()
        z.index_put_((dup, dup), v.expand(5, 7), accumulate=True)
        w = xt * 1
        w[dup[:2], j[0]] = v[:2].view(2)
        return a, b, c, y, z, w, xt.index_put((j.view(-1),), v[:5])
    check(fn, (x, xt, i, j, dup, v), rtol=0, atol=0)
    assert_lowered("index_put")


def test_index_put_out_of_range_raises_as_eager():
    f = kiln.compile(lambda x, i: x.index_put((i,), torch.tensor(1.0)) * 2)
    x = torch.zeros(4, 3)
    f(x, torch.tensor([0, 3]))
    assert_same(f(x, torch.tensor([-4, 1])), torch.zeros(4, 3).index_put((torch.tensor([-4, 1]),), torch.tensor(1.0)) * 2)
    for bad in (torch.tensor([0, 4]), torch.tensor([-5, 0])):
        with pytest.raises(IndexError):
            f(x, bad)


# ---- CUDA kernels of the new lowerings (NVRTC; no GPU needed) -----------------------------------
def test_cuda_kernels_compile():
    from test_cuda_codegen import NVRTC_SKIP
    if NVRTC_SKIP is not None:
        pytest.skip(NVRTC_SKIP)
    x, y, w = torch.randn(7, 33), torch.randn(7, 33), torch.rand(33)
    i, e = torch.randint(-5, 5, (33,), dtype=torch.int32), torch.randint(0, 40, (33,), dtype=torch.int32)

    def fn(x, y, w, i, e):
        return (torch.isinf(x) | torch.isfinite(y), torch.isneginf(x), torch.lerp(x, y, w), torch.lerp(x, y, 0.7),
                torch.addcmul(x, y, w, value=0.5), torch.addcdiv(x, y, w + 1), torch.aminmax(x, dim=1), i ** e,
                torch.select_scatter(x, y[0], 0, 3))
    kernels = kiln.codegen(fn, x, y, w, i, e, target="cuda")
    assert kernels
    for k in kernels:
        assert k.asm and ".entry" in k.asm


# ---- training: gradients through lerp / addcmul / addcdiv ---------------------------------------
def test_gradients_lerp_addcmul_addcdiv():
    torch.manual_seed(0)

    def f(a, b, w, c):
        y = torch.lerp(a, b, w) + torch.lerp(a, c, 0.3)
        z = torch.addcmul(y, b, c, value=0.5) + torch.addcdiv(a, b, c.abs() + 1, value=-2.0)
        return (z * z).sum()

    fk = kiln.compile(f)
    for _ in range(3):
        args = [torch.randn(9, 17, requires_grad=True), torch.randn(9, 17, requires_grad=True),
                torch.rand(17, requires_grad=True), torch.randn(9, 17, requires_grad=True)]
        ge = torch.autograd.grad(f(*args), args)
        lk = fk(*args)
        gk = torch.autograd.grad(lk, args)
        assert_same(lk, f(*args), rtol=1e-5, atol=1e-5)
        for a, e in zip(gk, ge):
            assert_same(a, e, rtol=1e-5, atol=1e-5)
    c = kiln.counters()
    assert c["eager_calls"] == 0, c["reasons"]
    assert c["compiled_backward_calls"] == 2
    assert_lowered("lerp", "addcmul", "addcdiv")


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_gradients_through_uneven_adaptive_pools(dtype):
    # _adaptive_avg_pool2d/3d_backward of uneven windows (windows overlapping, and outputs
    # larger than inputs) and adaptive_max_pool2d_backward (reading the indices kiln computed)
    # are lowered too: eager's gradients bit for bit.
    def f(x, v):
        return (F.adaptive_avg_pool2d(x, (5, 4)) * 3).sum() + F.adaptive_max_pool2d(x * 2, (4, 6)).sum() \
            + (F.adaptive_avg_pool2d(x, (17, 3)) * 0.3).sum() + F.adaptive_avg_pool3d(v, (2, 3, 4)).sum() \
            + F.adaptive_max_pool3d(v, 3).square().sum()

    fk = kiln.compile(f)
    for _ in range(3):
        x = torch.randn(2, 3, 11, 13, dtype=dtype, requires_grad=True)
        v = torch.randn(1, 2, 5, 7, 9, dtype=dtype, requires_grad=True)
        ge = torch.autograd.grad(f(x, v), [x, v])
        gk = torch.autograd.grad(fk(x, v), [x, v])
        for a, e in zip(gk, ge):
            assert_same(a, e, rtol=0, atol=0)
    c = kiln.counters()
    assert c["eager_calls"] == 0, c["reasons"]
    assert c["compiled_backward_calls"] == 2
    assert_lowered("adaptive")
