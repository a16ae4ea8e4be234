"""bfloat16 and float16 compiled on the CPU (Note [Half values in registers] in
codegen_cpu/cpu_codegen.cpp, Note [Half arithmetic] in passes/lower_pointwise.cpp).

Each half op computes in float32 and rounds once, as eager's CPU kernels do, so most results are
bit for bit eager's; transcendental functions (kiln's float32 exp/log/tanh against eager's Sleef)
may differ in the float32 result's last ulp, which rounds to the same half value nearly always:
those are compared within about one half ulp.
"""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, make_input

HALVES = (torch.bfloat16, torch.float16)
# about one ulp of the type, relative, and an absolute floor for values near zero
TOL = {torch.bfloat16: dict(rtol=8e-3, atol=1e-2), torch.float16: dict(rtol=1e-3, atol=1e-3)}


def dtype_id(dt):
    return str(dt).replace("torch.", "")


def compiled_twice(fn, *args):
    """Runs fn compiled twice (capture, then the cached program) and returns the second result;
    fails unless the second call ran compiled."""
    kiln.reset()
    f = kiln.compile(fn)
    f(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    out = f(*args)
    c = kiln.counters()
    assert c["cache_hits"] == 1 and c["eager_calls"] == 0, c
    return out


def same_bits(got, want, what=""):
    got, want = (got,), (want,)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape, w.shape)
        same = (g == w) | (g.isnan() & w.isnan())
        # -0 and +0 compare equal: compare signs too
        same &= (torch.signbit(g) == torch.signbit(w)) | g.isnan()
        assert bool(same.all()), f"{what}: {(~same).sum().item()} of {g.numel()} elements differ: " \
                                 f"got {g[~same][:5].tolist()} want {w[~same][:5].tolist()}"


def edge_values(dtype, n=1000, seed=0):
    """Random values of several magnitudes with inf, nan, -0, and values at the type's range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 1e4])[torch.randint(0, 4, (n,), generator=g)]
    big = 60000.0 if dtype == torch.float16 else 3e38
    x[:8] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0, big, -big, 1e-7])
    return x.to(dtype)


# ---- pointwise: rounded once per op, as eager ------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_arithmetic_rounds_as_eager_bit_for_bit(dtype):
    x = edge_values(dtype, seed=1)
    y = edge_values(dtype, seed=2).flip(0)

    def fn(x, y):
        xs = x.clamp(-1e4, 1e4)  # eager's vector lanes give nan for fmod(3e38, 0.1), its scalar tail not
        return (x + y, x * y, x - 2 * y, x / (y.abs() + 1), torch.maximum(x, y), torch.minimum(x, y * 0.5),
                torch.where(x > y, x, y * 0.3), x.abs(), -x, torch.clamp(x, -2, 3), x > 0.1, x == y,
                torch.fmod(xs, -0.1), torch.remainder(xs, 0.3), torch.floor_divide(xs, 0.7), x.floor(),
                x.round(), torch.relu(x), x * x * x + 1)

    got, want = compiled_twice(fn, x, y), fn(x, y)
    for i, (g, w) in enumerate(zip(got, want)):
        same_bits(g, w, f"output {i}")


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
@pytest.mark.parametrize("op", ["exp", "log", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "erf", "sqrt",
                                "rsqrt", "sin", "softplus", "pow"])
def test_math_functions_match_eager(dtype, op):
    fns = {"exp": torch.exp, "log": lambda x: torch.log(x.abs()), "tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
           "erf": torch.erf, "sqrt": lambda x: x.abs().sqrt(), "rsqrt": lambda x: x.abs().rsqrt(),
           "sin": torch.sin, "softplus": F.softplus, "pow": lambda x: x.abs() ** 0.7}
    fn = fns[op]
    x = edge_values(dtype, seed=3)
    got, want = compiled_twice(fn, x), fn(x)
    # Where eager's float32 formula is itself off (gelu(inf) is nan in eager, inf in float64),
    # kiln may agree with float64 instead.
    exact = fn(x.double()).to(dtype)
    close = lambda a, b: torch.isclose(a.float(), b.float(), equal_nan=True, **TOL[dtype])  # noqa: E731
    ok = close(got, want) | close(got, exact)
    assert bool(ok.all()), f"{(~ok).sum()} differ: x {x[~ok][:5].tolist()} got {got[~ok][:5].tolist()} " \
                           f"want {want[~ok][:5].tolist()}"


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_casts_round_as_eager(dtype):
    """float32/float64/int -> half rounds to nearest even (ties, overflow to inf, subnormals,
    NaN, -0); half -> int truncates; half -> other half goes through float32."""
    g = torch.Generator().manual_seed(4)
    f32 = torch.cat([edge_values(torch.float32, seed=5), torch.randn(500, generator=g) * 1e-5,
                     torch.tensor([65504.0, 65520.0, 65519.99, 3.3895e38, 3.39e38, 1.00390625, 1.01171875,
                                   2.0 ** -24, 2.0 ** -25, 2.0 ** -133, -2.0 ** -134])])
    f64 = f32.double() * (1 + 1e-12)
    ints = torch.randint(-70000, 70000, (300,), generator=g)
    other = torch.bfloat16 if dtype == torch.float16 else torch.float16

    def fn(f32, f64, ints, h):
        return (f32.to(dtype), f64.to(dtype), ints.to(dtype), ints.int().to(dtype), h.to(torch.int32),
                h.to(torch.int64), h.float() * 3, h.double(), h.to(other), h.bool(), (f32 * 2).to(dtype) + 1)

    h = f32.to(dtype)
    got, want = compiled_twice(fn, f32, f64, ints, h), fn(f32, f64, ints, h)
    for i, (gt, w) in enumerate(zip(got, want)):
        if i in (4, 5):  # half -> int of inf/nan/out of range is undefined behaviour in eager too
            ok = h.isfinite() & (h.float().abs() < 2e9)
            gt, w = gt[ok], w[ok]
        same_bits(gt, w, f"output {i}")


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_views_broadcasts_and_odd_sizes(dtype):
    """Non-contiguous, broadcast, size-1, empty, 0-dim operands and sizes that leave vector tails."""
    def fn(a, b, c, d, e):
        return (a.t() * b + 1, (a[::2, 1:] - c).exp(), d * 3, e + 1, torch.cat([a, a * 2], 1).sin())

    a = make_input((37, 45), dtype)
    b = make_input((45, 1), dtype)
    c = make_input((44,), dtype)
    d = make_input((0, 7), dtype)
    e = make_input((), dtype)
    got, want = compiled_twice(fn, a, b, c, d, e), fn(a, b, c, d, e)
    for g, w in zip(got, want):
        assert_same(g, w, **TOL[dtype])


# ---- reductions and normalisations: float32 accumulators, one rounding --------------------------------
@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_reductions_accumulate_in_float32(dtype):
    """A sum of 4096 half values that are each 1 is exactly 4096 in eager (float accumulation)
    though 4096 - 1 + 1 is not representable step by step in bfloat16."""
    def fn(x, ones):
        return (x.sum(-1), x.mean(0), x.amax(-1), x.amin(0), x.argmax(-1), ones.sum(), x.prod(-1),
                x.float().sum(-1), torch.cumsum(x, -1))

    x = make_input((33, 129), dtype)
    ones = torch.ones(4096, dtype=dtype)
    got, want = compiled_twice(fn, x, ones), fn(x, ones)
    assert got[5].item() == 4096
    for i, (g, w) in enumerate(zip(got, want)):
        tol = dict(rtol=2e-2, atol=6e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=4e-3)
        assert_same(g, w, what=f"output {i}", **tol)


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_softmax_and_norms(dtype):
    w = make_input((96,), dtype)
    b = make_input((96,), dtype)

    def fn(x):
        rms = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(dtype) * w
        return (F.softmax(x, -1), F.log_softmax(x, -1), F.layer_norm(x, (96,), w, b, 1e-5), rms,
                F.softmax(x.float(), -1).to(dtype))

    x = make_input((13, 96), dtype) * 4
    got, want = compiled_twice(fn, x), fn(x)
    for i, (g, w_) in enumerate(zip(got, want)):
        assert_same(g, w_, what=f"output {i}", rtol=2e-2, atol=2e-2)


# ---- autocast, models, and what stays eager -------------------------------------------------------------
def test_autocast_region_is_captured_with_eagers_casts():
    w1, w2 = make_input((64, 48)), make_input((32, 64))

    def fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = F.gelu(F.linear(x, w1))
            y = F.linear(h, w2)
        return y.float().softmax(-1), y.dtype

    x = make_input((10, 48))
    (got, dt), (want, wdt) = compiled_twice(fn, x), fn(x)
    assert dt == wdt == torch.bfloat16
    assert_same(got, want, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_transformer_layer_in_half_precision_runs_compiled(dtype):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).eval().to(dtype)
    x = torch.randn(2, 9, 64).to(dtype)
    with torch.no_grad():
        want = layer(x)
        got = compiled_twice(layer, x)
    assert_same(got, want, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_training_step_in_half_precision(dtype):
    """Gradients of a small half-precision MLP through the compiled forward and backward match
    eager's within the type's precision."""
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                              torch.nn.Linear(32, 8)).to(dtype)
    x = torch.randn(6, 24).to(dtype)
    mlp(x).float().pow(2).mean().backward()
    want = [p.grad.clone() for p in mlp.parameters()]
    f = kiln.compile(mlp)
    for _ in range(2):
        mlp.zero_grad()
        f(x).float().pow(2).mean().backward()
    assert kiln.counters()["eager_calls"] == 0 and kiln.counters()["cache_hits"] == 1, kiln.counters()
    for g, w in zip([p.grad for p in mlp.parameters()], want):
        assert_same(g, w, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", HALVES, ids=dtype_id)
def test_conversions_are_exact_over_every_bit_pattern(dtype):
    """Widening: all 65536 half values (subnormals, infinities, NaNs) to float32, exactly.
    Narrowing: every half value, the midpoints between neighbours (ties to even), points just
    off them, and random float32 bit patterns, rounded to the half type as c10 rounds."""
    halves = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    wide = halves.float()
    g = torch.Generator().manual_seed(7)
    finite = wide[wide.isfinite()].unique()
    mids = (finite[1:].double() + finite[:-1].double()) / 2
    f32 = torch.cat([wide, mids.float(), mids.float().nextafter(torch.tensor(float("inf"))),
                     mids.float().nextafter(torch.tensor(float("-inf"))),
                     torch.randint(-2 ** 31, 2 ** 31 - 1, (200000,), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)])

    def fn(h, f):
        # the third: rounded in registers and used there (stored as float32), not at a store
        return h.float(), f.to(dtype), f.to(dtype).float()

    got, want = compiled_twice(fn, halves, f32), fn(halves, f32)
    same_bits(got[0], want[0], "widen")
    # NaN payloads may differ (both are NaN); every other value bit for bit
    same_bits(got[1], want[1], "narrow")
    same_bits(got[2], want[2], "round in registers")


def test_autocast_training_step_runs_compiled():
    """A training step under torch.autocast("cpu", bfloat16), the model passed as an argument:
    compiled forward and backward, gradients as eager's within bfloat16's precision."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 10))
    x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))

    def step(model, x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        return F.cross_entropy(out.float(), y)

    m.zero_grad()
    step(m, x, y).backward()
    want = [p.grad.clone() for p in m.parameters()]
    f = kiln.compile(step)
    for _ in range(3):
        m.zero_grad()
        f(m, x, y).backward()
    c = kiln.counters()
    assert c["eager_calls"] == 0 and c["compiled_backward_calls"] == 2, c
    for g, w in zip([p.grad for p in m.parameters()], want):
        assert_same(g, w, rtol=2e-2, atol=2e-3)


@pytest.mark.skipif(not getattr(kiln._C, "blas_bf16", lambda: False)(), reason="libdnnl has no bfloat16 GEMM")
@pytest.mark.parametrize("shape", [(64, 96, 48), (1, 96, 48), (7, 1, 5), (33, 17, 0), (3, 0, 4), (130, 300, 70)])
def test_bfloat16_products_are_kiln_steps_rounded_once(shape):
    """bfloat16 mm/bmm/addmm run as kiln's oneDNN steps (Note [bfloat16 products]): float32
    accumulation, a linear layer's bias added before the one rounding (eager's addmm), the
    epilogue on each tile. Bit for bit as eager where both sum in the same order (small K)."""
    M, K, N = shape
    x, w, b = make_input((M, K), torch.bfloat16), make_input((N, K), torch.bfloat16), make_input((N,), torch.bfloat16)
    w2, w3 = make_input((N, K), torch.bfloat16), make_input((K, N), torch.bfloat16)

    def fn(x):
        # Distinct products: one product read both with and without the bias (CSE makes
        # F.linear(x, w, b) and x @ w.t() one) keeps its rounded result, and the bias sum then
        # rounds a second time (Note [Bias in the product]: one rounding of the result apart).
        return (F.linear(x, w, b), torch.relu(x @ w2.t()) * 2, torch.bmm(x.expand(2, M, K), w3.expand(2, K, N)),
                F.linear(x * 2, w))

    got, want = compiled_twice(fn, x), fn(x)
    assert "aten.mm.default" not in kiln.counters()["fallback_op_counts"]
    assert "aten.bmm.default" not in kiln.counters()["fallback_op_counts"]
    for i, (g, w_) in enumerate(zip(got, want)):
        if K <= 96:
            same_bits(g, w_, f"output {i}")
        else:  # libraries may split long sums differently: a float32 rounding apart, then bfloat16's
            assert_same(g, w_, what=f"output {i}", rtol=8e-3, atol=1e-2)


@pytest.mark.skipif(not getattr(kiln._C, "blas_bf16", lambda: False)(), reason="libdnnl has no bfloat16 GEMM")
@pytest.mark.parametrize("K", [1, 2, 7, 9, 16, 33, 257])
def test_bfloat16_products_of_infinities_and_nans(K):
    """Half fuzzer seed 1240: oneDNN 2.6's bfloat16 GEMM padded an odd K so that an infinite
    last element of A gave NaN where eager gives inf (Note [bfloat16 products])."""
    for special in (float("inf"), float("-inf"), float("nan")):
        for ta in (False, True):
            a = make_input((16, K), torch.bfloat16).abs() + 0.5
            b = make_input((K, 20), torch.bfloat16).abs() + 0.5
            for p in {0, K // 2, K - 1}:
                a[14, p] = special
            a = a.t().contiguous().t() if ta else a
            got, want = compiled_twice(lambda x, y: x @ y, a, b), a @ b
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), (special, ta)
            assert_same(got, want, rtol=8e-3, atol=1e-2)
