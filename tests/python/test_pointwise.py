"""End-to-end tests of kiln's pointwise foundation against eager PyTorch.

Each test compiles once per (op, dtype) and feeds a sweep of shapes and layouts through one call
(one output per input), since a graph costs tens of milliseconds to JIT. kiln.testing.check
asserts the second call is a compiled cache hit and compares every output with eager.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, check, make_input

FLOATS = (torch.float32, torch.float64)
INTS = (torch.int32, torch.int64)
SHAPES = [(), (1,), (7,), (17,), (1023,), (45, 65), (0, 3)]


def dtype_id(dt):
    return str(dt).replace("torch.", "")


def sweep(dtype, low=None, high=None, nonzero=False):
    """One input per shape in SHAPES (contiguous), plus transposed / step-sliced / broadcast
    views of (45, 65) and a step-sliced (17,)."""
    kw = dict(low=low, high=high, nonzero=nonzero)
    xs = [make_input(s, dtype, **kw) for s in SHAPES]
    xs += [make_input((45, 65), dtype, layout=l, **kw) for l in ("transposed", "sliced", "broadcast")]
    xs.append(make_input((17,), dtype, layout="sliced", **kw))
    return xs


def pair_sweep(dtype_a, dtype_b=None, low_b=None, high_b=None, nonzero_b=False):
    """Pairs of operands exercising broadcasting and layouts: same shape, (3,1,5) vs (4,5),
    0-dim vs (17,), (1,) vs (1023,), empty, transposed vs contiguous, sliced vs broadcast."""
    dtype_b = dtype_b or dtype_a
    kb = dict(low=low_b, high=high_b, nonzero=nonzero_b)
    A = lambda s, l="contiguous": make_input(s, dtype_a, layout=l)
    B = lambda s, l="contiguous": make_input(s, dtype_b, layout=l, **kb)
    return [
        (A((7,)), B((7,))),
        (A((3, 1, 5)), B((4, 5))),
        (A(()), B((17,))),
        (A((17,)), B(())),
        (A((1,)), B((1023,))),
        (A((0, 3)), B((0, 3))),
        (A((45, 65), "transposed"), B((45, 65))),
        (A((45, 65), "sliced"), B((45, 65), "broadcast")),
        (A((4, 5), "broadcast"), B((3, 1, 5))),
    ]


def each(op):
    """fn(*xs) -> tuple(op(x) for x in xs): one graph, one output per input."""
    return lambda *xs: tuple(op(x) for x in xs)


def each_pair(op):
    """fn(a0, b0, a1, b1, ...) -> (op(a0, b0), op(a1, b1), ...)."""
    return lambda *xs: tuple(op(xs[i], xs[i + 1]) for i in range(0, len(xs), 2))


def flat(pairs):
    return [t for p in pairs for t in p]


# ---- unary ops ---------------------------------------------------------------------------
# name -> (fn, low, high): a sensible input domain for random data.
UNARY = {
    "abs": (torch.abs, None, None),
    "neg": (torch.neg, None, None),
    "neg_op": (lambda x: -x, None, None),
    "exp": (torch.exp, -5, 5),
    "exp2": (torch.exp2, -5, 5),
    "log": (torch.log, 0.01, 10),
    "log2": (torch.log2, 0.01, 10),
    "log1p": (torch.log1p, -0.9, 10),
    "expm1": (torch.expm1, -3, 3),
    "sqrt": (torch.sqrt, 0, 10),
    "rsqrt": (torch.rsqrt, 0.01, 10),
    "reciprocal": (torch.reciprocal, 0.1, 5),
    "sin": (torch.sin, -6, 6),
    "cos": (torch.cos, -6, 6),
    "tan": (torch.tan, -1.4, 1.4),
    "tanh": (torch.tanh, -5, 5),
    "sigmoid": (torch.sigmoid, -8, 8),
    "relu": (torch.relu, None, None),
    "F.relu": (F.relu, None, None),
    "leaky_relu": (F.leaky_relu, None, None),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), None, None),
    "elu": (F.elu, -4, 4),
    "elu_alpha": (lambda x: F.elu(x, alpha=0.5), -4, 4),
    "gelu": (F.gelu, -4, 4),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), -4, 4),
    "silu": (F.silu, -6, 6),
    "mish": (F.mish, -6, 6),
    "hardswish": (F.hardswish, -5, 5),
    "hardsigmoid": (F.hardsigmoid, -5, 5),
    "softplus": (F.softplus, -6, 6),
    "softplus_beta": (lambda x: F.softplus(x, beta=2.0, threshold=3.0), -4, 4),
    "erf": (torch.erf, -3, 3),
    "floor": (torch.floor, -5, 5),
    "ceil": (torch.ceil, -5, 5),
    "round": (torch.round, -5, 5),
    "trunc": (torch.trunc, -5, 5),
    "sign": (torch.sign, None, None),
    "hardtanh": (F.hardtanh, -2, 2),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_float(name, dtype):
    fn, lo, hi = UNARY[name]
    check(each(fn), sweep(dtype, lo, hi))


# Unary ops torch allows on integers and bools (float-only ops promote to the default float).
UNARY_INT = ["abs", "neg", "sign", "floor", "ceil", "round", "trunc", "relu", "exp", "exp2", "log", "sqrt",
             "sigmoid", "tanh", "erf", "sin", "reciprocal", "rsqrt", "bitwise_not", "logical_not"]
UNARY_BOOL = ["sign", "exp", "sqrt", "sigmoid", "erf", "bitwise_not", "logical_not"]
_INT_FNS = dict(UNARY, bitwise_not=(torch.bitwise_not, None, None), logical_not=(torch.logical_not, None, None),
                invert_op=(lambda x: ~x, None, None))


@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
@pytest.mark.parametrize("name", UNARY_INT)
def test_unary_int(name, dtype):
    fn = _INT_FNS[name][0]
    low = 1 if name in ("log", "sqrt", "rsqrt", "reciprocal") else None
    check(each(fn), sweep(dtype, low=low, high=50 if low else None))


@pytest.mark.parametrize("name", UNARY_BOOL)
def test_unary_bool(name):
    check(each(_INT_FNS[name][0]), sweep(torch.bool))


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_logical_not_float(dtype):
    xs = sweep(dtype)
    xs[4][::3] = 0  # some exact zeros
    check(each(torch.logical_not), xs)


# ---- edge values --------------------------------------------------------------------------
def edge_values(dtype):
    """inf, nan, signed zeros, huge/tiny/subnormal magnitudes and rounding ties, repeated so the
    vector body and the scalar tail both see them."""
    big = 1e30 if dtype == torch.float32 else 1e300
    sub = 1e-40 if dtype == torch.float32 else 1e-310
    over = 89.0 if dtype == torch.float32 else 710.0
    vals = [0.0, -0.0, math.inf, -math.inf, math.nan, big, -big, sub, -sub, 1e-30, -1e-30, over, -over,
            -104.0, 20.0, -20.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 3.0, 1e5, -1e5, 123.456, -7.25]
    t = torch.tensor(vals, dtype=dtype)
    return torch.cat([t, t.flip(0), t[:7]])


def _unary_edge_params():
    out = []
    for name in UNARY:
        for dt in FLOATS:
            out.append(pytest.param(name, dt, id=f"{name}-{dtype_id(dt)}"))
    return out


@pytest.mark.parametrize("name,dtype", _unary_edge_params())
def test_unary_edge_values(name, dtype):
    fn = UNARY[name][0]
    x = edge_values(dtype)
    if name.startswith("gelu") and dtype == torch.float32:
        # Eager's vectorised float32 gelu gives NaN for +inf (kiln gives inf, the limit).
        x = x[~x.isinf()]
    check(fn, (x,))


def _assert_zero_signs(compiled, fn, x):
    for i, (got, want) in enumerate(zip(compiled(x), fn(x))):
        assert torch.equal(torch.signbit(got), torch.signbit(want)), f"output {i}: sign of zero {got} vs {want}"


def test_negative_zero_constant_kept_apart_from_zero():
    x = torch.tensor([0.0, -0.0, 0.4, -0.4, -0.6, 0.6, -1e-30, 1e-30])
    fn = lambda v: (torch.where(v > 0, v, -0.0), torch.full_like(v, -0.0), v * 0.0)
    _assert_zero_signs(check(fn, (x,)), fn, x)


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_nan_constant_kept_apart_from_other_constants(dtype):
    x = make_input((33,), dtype)
    check(lambda v: (torch.where(v > 0, v, math.nan), v + 2.0), (x,))


def _signbit(t):
    return torch.signbit(t) if t.dtype.is_floating_point else None


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_signed_zero_results(dtype):
    """Ops whose result is a zero must give it eager's sign (assert_close ignores the sign)."""
    x = torch.tensor([0.0, -0.0, 0.4, -0.4, -0.6, 0.6, -1e-30, 1e-30], dtype=dtype)
    fns = {
        "neg": torch.neg, "abs": torch.abs, "ceil": torch.ceil, "floor": torch.floor, "trunc": torch.trunc,
        "round": torch.round, "mul_zero": lambda v: v * 0.0, "mul_neg": lambda v: v * -1.0,
        "copy": lambda v: v.clone(), "sub_zero": lambda v: v - 0.0,
    }  # -0.0 constants: see test_negative_zero_constant_kept_apart_from_zero
    fn = lambda v: tuple(f(v) for f in fns.values())
    compiled = check(fn, (x,))
    for name, got, want in zip(fns, compiled(x), fn(x)):
        assert torch.equal(_signbit(got), _signbit(want)), f"{name}: sign of zero differs {got} vs {want}"


# ---- binary ops -----------------------------------------------------------------------------
BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "add_op": lambda a, b: a + b, "sub_op": lambda a, b: a - b, "mul_op": lambda a, b: a * b,
    "truediv_op": lambda a, b: a / b,
    "add_alpha": lambda a, b: torch.add(a, b, alpha=2), "sub_alpha": lambda a, b: torch.sub(a, b, alpha=3),
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "lt_op": lambda a, b: a < b, "ge_op": lambda a, b: a >= b, "eq_op": lambda a, b: a == b,
    "minimum": torch.minimum, "maximum": torch.maximum,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}
DIVLIKE = {
    "fmod": torch.fmod, "remainder": torch.remainder, "mod_op": lambda a, b: a % b,
    "floor_divide": torch.floor_divide, "floordiv_op": lambda a, b: a // b,
    "div_trunc": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"),
}
BITWISE = {
    "bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or, "bitwise_xor": torch.bitwise_xor,
    "and_op": lambda a, b: a & b, "or_op": lambda a, b: a | b, "xor_op": lambda a, b: a ^ b,
}


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=dtype_id)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary(name, dtype):
    op = BINARY[name]
    nonzero = name in ("div", "truediv_op")
    pairs = pair_sweep(dtype, nonzero_b=nonzero)
    if name in ("lt", "le", "gt", "ge", "eq", "ne", "eq_op", "minimum", "maximum") and dtype in INTS:
        pairs.append((torch.arange(-5, 5, dtype=dtype), torch.arange(4, -6, -1, dtype=dtype)))  # ties
    check(each_pair(op), flat(pairs))


@pytest.mark.parametrize("name", ["add", "mul", "eq", "ne", "lt", "gt", "minimum", "maximum", "logical_and",
                                  "logical_or", "logical_xor", "add_op", "div", "truediv_op"])
def test_binary_bool(name):
    check(each_pair(BINARY[name]), flat(pair_sweep(torch.bool)))


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=dtype_id)
@pytest.mark.parametrize("name", list(DIVLIKE))
def test_division_family(name, dtype):
    """fmod/remainder/floor division with negative operands on both sides."""
    op = DIVLIKE[name]
    high = 2.0 if dtype.is_floating_point else 9
    pairs = pair_sweep(dtype, low_b=-high, high_b=high, nonzero_b=True)
    if dtype.is_floating_point:
        a = torch.tensor([7.5, -7.5, 7.5, -7.5, 6.0, -6.0, 0.0, -0.0, 1e-3, 5.0], dtype=dtype)
        b = torch.tensor([2.0, 2.0, -2.0, -2.0, 3.0, 3.0, 3.0, -3.0, -1.0, 0.5], dtype=dtype)
    else:
        a = torch.tensor([7, -7, 7, -7, 6, -6, 0, 1, -1, 9], dtype=dtype)
        b = torch.tensor([2, 2, -2, -2, 3, -3, -5, -5, 5, 10], dtype=dtype)
        pairs.append((make_input((45, 65), dtype, low=-1000, high=1000), make_input((45, 65), dtype, nonzero=True)))
    pairs.append((a, b))
    check(each_pair(op), flat(pairs))


@pytest.mark.parametrize("dtype", INTS + (torch.bool,), ids=dtype_id)
@pytest.mark.parametrize("name", list(BITWISE))
def test_bitwise(name, dtype):
    low, high = (None, None) if dtype == torch.bool else (-300, 300)
    pairs = [(make_input(s, dtype, low=low, high=high), make_input(t, dtype, low=low, high=high))
             for s, t in [((7,), (7,)), ((3, 1, 5), (4, 5)), ((), (17,)), ((1023,), (1023,)), ((0, 3), (3,))]]
    a = make_input((45, 65), dtype, layout="transposed", low=low, high=high)
    pairs.append((a, make_input((45, 65), dtype, layout="sliced", low=low, high=high)))
    check(each_pair(BITWISE[name]), flat(pairs))


@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
def test_bitwise_scalar_operands(dtype):
    x = make_input((33,), dtype, low=-300, high=300)
    check(lambda v: (v & 5, v | 12, v ^ -1, 3 & v, ~v), (x,))


# Binary edge values: every (a, b) pair of edge values, via broadcasting (n, 1) against (n,).
BINARY_EDGE = {**{k: BINARY[k] for k in ("add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
                                           "minimum", "maximum")},
               **DIVLIKE, "pow": torch.pow}


def _binary_edge_params():
    return [pytest.param(n, dt, id=f"{n}-{dtype_id(dt)}") for n in BINARY_EDGE for dt in FLOATS]


@pytest.mark.parametrize("name,dtype", _binary_edge_params())
def test_binary_edge_values(name, dtype):
    v = edge_values(dtype)[:28]
    b = v
    if name in ("fmod", "remainder", "mod_op"):
        # No tiny divisors: eager's vectorised fmod computes a - trunc(a / b) * b, which gives
        # NaN once a / b overflows (fmod(1e30, 1e-30)), unlike its own scalar path and libm.
        b = v[v.abs() > 1e-20]
    check(BINARY_EDGE[name], (v[:, None], b))


# ---- Python scalar operands and type promotion -------------------------------------------------
SCALAR_FNS = {
    "x+1": lambda x: x + 1, "x+1.5": lambda x: x + 1.5, "1-x": lambda x: 1 - x, "x-2.5": lambda x: x - 2.5,
    "2.5-x": lambda x: 2.5 - x, "x*3": lambda x: x * 3, "x*-0.5": lambda x: x * -0.5, "x/4": lambda x: x / 4,
    "x/0.5": lambda x: x / 0.5, "2/x": lambda x: 2 / x, "x<0.25": lambda x: x < 0.25, "x==1": lambda x: x == 1,
    "x>=-1": lambda x: x >= -1, "2<x": lambda x: 2 < x, "max(x,0.5)": lambda x: torch.clamp_min(x, 0.5),
    "add_alpha": lambda x: torch.add(x, 2, alpha=3), "sub_alpha": lambda x: torch.sub(x, 1.5, alpha=2),
    "rsub_alpha": lambda x: torch.rsub(x, 2, alpha=3), "x*True": lambda x: x * True,
    "x%3": lambda x: x % 3, "x%-2.5": lambda x: x % -2.5, "x//2": lambda x: x // 2,
    "fmod(x,-3)": lambda x: torch.fmod(x, -3), "x//-1.5": lambda x: x // -1.5,
}


@pytest.mark.parametrize("dtype", FLOATS + INTS + (torch.bool,), ids=dtype_id)
def test_python_scalar_operands(dtype):
    # torch refuses `-` on bool tensors.
    names = [n for n in SCALAR_FNS if not (dtype == torch.bool and n in ("1-x", "2.5-x", "x-2.5", "rsub_alpha",
                                                                          "sub_alpha"))]
    if dtype != torch.bool:
        xs = [make_input((45, 65), dtype, nonzero=True, layout="transposed"), make_input((), dtype, nonzero=True),
              make_input((17,), dtype, nonzero=True)]
    else:
        xs = [make_input((45, 65), dtype, layout="transposed"), make_input((17,), dtype), make_input((), dtype)]

    def fn(*vs):
        return tuple(SCALAR_FNS[n](v) for v in vs for n in names)
    check(fn, xs)


def test_zero_dim_identity_arithmetic_output():
    # Regression: simplify folds x*1, x/1, x-0 to x for nodes without recorded strides (every
    # 0-dim value), so the graph output became the input itself and lowering failed with
    # "input %0 without a buffer" (fixed in 4c94acf).
    x = make_input((), torch.float32)
    check(lambda v: (v * 1, v / 1, v - 0, v * True), (x,))


PROMOTION = {
    "int32+float_scalar": (lambda a, b: a + 2.5, (torch.int32, None)),
    "int64*float_scalar": (lambda a, b: a * -1.25, (torch.int64, None)),
    "int32+int_scalar": (lambda a, b: a + 7, (torch.int32, None)),
    "int32+bool_scalar": (lambda a, b: a + True, (torch.int32, None)),
    "int32+int64": (lambda a, b: a + b, (torch.int32, torch.int64)),
    "int64-int32": (lambda a, b: a - b, (torch.int64, torch.int32)),
    "float32+float64_0dim": (lambda a, b: a + b, (torch.float32, "f64_0dim")),
    "float64_0dim*float32": (lambda a, b: b * a, (torch.float32, "f64_0dim")),
    "int32+float64_0dim": (lambda a, b: a + b, (torch.int32, "f64_0dim")),
    "float32+float64": (lambda a, b: a + b, (torch.float32, torch.float64)),
    "float32+int64": (lambda a, b: a * b, (torch.float32, torch.int64)),
    "bool+int_scalar": (lambda a, b: a + 3, (torch.bool, None)),
    "bool+float_scalar": (lambda a, b: a * 1.5, (torch.bool, None)),
    "bool+int32": (lambda a, b: a + b, (torch.bool, torch.int32)),
    "bool+bool": (lambda a, b: a + b, (torch.bool, torch.bool)),
    "uint8+int8": (lambda a, b: a + b, (torch.uint8, torch.int8)),
    "int16*int32": (lambda a, b: a * b, (torch.int16, torch.int32)),
    "int/int": (lambda a, b: a / b, (torch.int32, "nonzero_int64")),
    "int//float_scalar": (lambda a, b: a // 2.5, (torch.int32, None)),
    "int<float_scalar": (lambda a, b: a < 2.5, (torch.int64, None)),
    "int32==float32": (lambda a, b: a == b.round(), (torch.int32, torch.float32)),
    "where_int_float": (lambda a, b: torch.where(a > 0, a, b), (torch.int32, torch.float64)),
    "where_float_scalar": (lambda a, b: torch.where(a > 0, a, 0.5), (torch.int64, None)),
    "max_int_float": (lambda a, b: torch.maximum(a, b), (torch.int32, torch.float32)),
    "int_pow_float": (lambda a, b: a ** 2.5, (torch.int64, "positive")),
    "float_tensor+int_0dim": (lambda a, b: a + b, (torch.float32, "i64_0dim")),
}


def _promo_input(kind, shape):
    if kind is None:
        return None
    if kind == "f64_0dim":
        return torch.tensor(1.0 / 3.0, dtype=torch.float64)
    if kind == "i64_0dim":
        return torch.tensor(-3, dtype=torch.int64)
    if kind == "nonzero_int64":
        return make_input(shape, torch.int64, nonzero=True)
    if kind == "positive":
        return None
    low = 0 if kind == torch.uint8 else None
    return make_input(shape, kind, low=low)


@pytest.mark.parametrize("name", list(PROMOTION))
def test_type_promotion(name):
    fn, (ka, kb) = PROMOTION[name]
    a = make_input((4, 5), ka, low=1 if kb == "positive" else (0 if ka == torch.uint8 else None))
    b = _promo_input(kb, (4, 5))
    check(fn, (a, b))


# ---- pow ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_pow_scalar_exponents(dtype):
    exps = [2, 3, 0.5, -1, 2.5, -0.5, -2, 1, 0, 1.0, 4, -3]
    xs = [make_input((45, 65), dtype, low=0.1, high=2.0, layout="transposed"), make_input((17,), dtype, low=0.1, high=2),
          make_input((), dtype, low=0.1, high=2), make_input((33,), dtype, low=-2, high=2)]
    check(lambda *vs: tuple(v ** e for v in vs for e in exps) + tuple(torch.pow(v, e) for v in vs for e in exps), xs)


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_pow_tensor_exponent(dtype):
    base = [make_input(s, dtype, low=0.1, high=3.0) for s in [(7,), (3, 1, 5), (45, 65)]]
    exp = [make_input(s, dtype, low=-2, high=2) for s in [(7,), (4, 5), (45, 65)]]
    exp[2] = exp[2].t().contiguous().t()  # transposed exponent
    fn = lambda a0, a1, a2, e0, e1, e2: (a0 ** e0, torch.pow(a1, e1), a2.pow(e2), 2 ** e0, 0.5 ** e1,
                                         torch.pow(2.5, e2))
    check(fn, base + exp)


@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
def test_pow_int(dtype):
    x = make_input((33,), dtype, low=-9, high=9)
    check(lambda a: (a ** 2, a ** 3, a ** 0, a ** 1, torch.pow(a, 2), a.pow(5)), (x,))


@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
def test_pow_int_tensor_exponent(dtype):
    # Note [Integer pow] in passes/lower_pointwise.cpp (more in test_op_coverage.py)
    x = make_input((33,), dtype, low=-9, high=9)
    y = make_input((33,), dtype, low=-2, high=40)
    check(lambda a, b: (a ** b, 2 ** b), (x, y))


# ---- where / clamp ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS + INTS + (torch.bool,), ids=dtype_id)
def test_where(dtype):
    c = make_input((3, 1, 5), torch.bool)
    a = make_input((4, 5), dtype)
    b = make_input((3, 4, 5), dtype, layout="transposed")
    x = make_input((45, 65), dtype, layout="sliced")
    y = make_input((45, 65), dtype, layout="broadcast")
    s = 1 if dtype != torch.bool else True
    fn = lambda c, a, b, x, y: (torch.where(c, a, b), torch.where(x > y, x, y), torch.where(c, a, s),
                                torch.where(c, s, a), x.where(x != y, y), torch.where(c[0, 0], a, b[0]))
    check(fn, (c, a, b, x, y))


@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=dtype_id)
def test_clamp(dtype):
    fl = dtype.is_floating_point
    lo, hi = (-0.5, 0.75) if fl else (-3, 4)
    x = make_input((45, 65), dtype, layout="transposed")
    y = make_input((17,), dtype)
    tlo = make_input((45, 1), dtype, low=-1.5 if fl else -10, high=0)
    thi = make_input((65,), dtype, low=0, high=1.5 if fl else 10)

    def fn(x, y, tlo, thi):
        return (x.clamp(lo, hi), torch.clamp(y, min=lo), torch.clamp(y, max=hi), x.clamp_min(lo), x.clamp_max(hi),
                torch.clamp(x, tlo, thi), torch.clamp(x, min=tlo), torch.clamp(x, max=thi),
                x.clamp(hi, lo), torch.clamp(y, -1, 1), F.hardtanh(x), F.relu6(x))
    check(fn, (x, y, tlo, thi))


def test_clamp_int_tensor_float_bound():
    x = make_input((45, 65), torch.int32, low=-10, high=10)
    check(lambda v: (torch.clamp(v, min=-2.5), torch.clamp(v, max=3.5), v.clamp(-1.5, 2.5)), (x,))


def test_clamp_nan():
    x = torch.tensor([math.nan, -math.inf, math.inf, 0.0, -2.0, 2.0, 0.3] * 3)
    lo = torch.tensor([math.nan, -1.0, 0.0, -1.0, math.nan, -1.0, 0.5] * 3)
    check(lambda v, l: (v.clamp(-1, 1), v.clamp(min=l), v.clamp(max=l), torch.clamp(v, l, l + 1)), (x, lo))


# ---- casts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("src", FLOATS + INTS + (torch.bool,), ids=dtype_id)
def test_casts(src):
    x = make_input((45, 65), src, layout="transposed", low=-100 if src.is_floating_point else None,
                   high=100 if src.is_floating_point else None)
    y = make_input((17,), src)

    def fn(x, y):
        return (x.float(), x.double(), x.int(), x.long(), x.bool(), x.to(torch.int32), x.to(torch.float64),
                y.to(torch.bool), y.float(), y.to(dtype=torch.int64), x.type(torch.float32), (x.to(torch.int32) + 1),
                y.to(x.dtype))
    check(fn, (x, y))


def test_cast_narrow_ints():
    x = make_input((33,), torch.int64, low=0, high=100)
    f = make_input((33,), torch.float32, low=0, high=100)
    check(lambda v, w: (v.to(torch.uint8), v.to(torch.int8), v.to(torch.int16), w.to(torch.uint8), w.to(torch.int8),
                        v.to(torch.uint8).to(torch.int32) * 2, w.to(torch.int16)), (x, f))


def test_cast_edge_values():
    x = torch.tensor([0.0, -0.0, 0.5, -0.5, 0.99, -0.99, 1.5, -1.5, 2.5, -2.5, 1e-30, math.nan, 1e6, -1e6] * 2)
    check(lambda v: (v.bool(), v.int(), v.long(), v.double(), v.to(torch.int16)), (x,))


def test_cast_identity_returns_input_values():
    x = make_input((5, 6), torch.float32)
    check(lambda v: (v.to(torch.float32), v.float() * 2), (x,))


# ---- views -----------------------------------------------------------------------------------------
VIEWS = {
    "reshape": lambda x: x.reshape(6, 20) * 2,
    "reshape_-1": lambda x: x.reshape(-1) + 1,
    "view": lambda x: x.view(2, 60).exp(),
    "view_split": lambda x: x.view(4, 3, 2, 5) - 1,
    "permute": lambda x: x.permute(2, 0, 1) * 3,
    "permute_neg": lambda x: x.permute(-1, -3, -2).sin(),
    "transpose": lambda x: x.transpose(0, 2).abs(),
    "transpose_neg": lambda x: torch.transpose(x, -1, -2) + 0.5,
    "t": lambda x: x[0].t() * x[1].t(),
    "mT": lambda x: x.mT.neg(),
    "unsqueeze": lambda x: x.unsqueeze(1) + x.unsqueeze(0)[:, :1],
    "unsqueeze_last": lambda x: x.unsqueeze(-1).exp(),
    "squeeze": lambda x: x[:, :1].squeeze() * 2,
    "squeeze_dim": lambda x: x[:1].squeeze(0) - 1,
    "expand": lambda x: x[:, :1, :].expand(4, 6, 5) + x,
    "expand_new_dim": lambda x: x[0, 0].expand(3, 5) * 2,
    "expand_as": lambda x: x[0:1].expand_as(x) * x,
    "slice_step": lambda x: x[::2, 1::3] * 2,
    "slice_neg": lambda x: x[-2:, :-1, ::4] + 1,
    "slice_step_chain": lambda x: x[:, ::2][:, 1:][..., ::2].cos(),
    "select0": lambda x: x[0] + 1,
    "select_col": lambda x: x[:, 2] * 2,
    "select_neg": lambda x: x[-1, :, -2].exp(),
    "select_ellipsis": lambda x: x[..., 1].abs(),
    "flatten": lambda x: x.flatten() + 1,
    "flatten_1": lambda x: torch.flatten(x, 1) * 2,
    "unflatten": lambda x: x.flatten().unflatten(0, (6, 20)) - 1,
    "view_as": lambda x: x.reshape(120).view_as(x.reshape(8, 15)) + 1,
    "chain": lambda x: (x.permute(1, 0, 2)[1:, ::2].reshape(5, 2, 5)[:, 0] * 2).t().unsqueeze(0).exp(),
    "chain2": lambda x: x.transpose(0, 1).reshape(6, 20)[::3].flatten()[5:].sigmoid(),
    "permute_output": lambda x: x.permute(2, 1, 0),
    "slice_output": lambda x: x[1:, ::2],
    "select_output": lambda x: x[1],
    "two_views": lambda x: x[0] + x[1].t().t() + x[:, 0, :][2],
}


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("name", list(VIEWS))
def test_views(name, layout):
    x = make_input((4, 6, 5), torch.float32, layout=layout)
    if layout == "transposed" and name == "view":
        # .view cannot merge transposed dims: eager raises, and so must the compiled function.
        with pytest.raises(RuntimeError):
            VIEWS[name](x)
        with pytest.raises(RuntimeError):
            kiln.compile(VIEWS[name])(x)
        return
    check(VIEWS[name], (x,))


@pytest.mark.parametrize("dtype", (torch.float64, torch.int32, torch.bool), ids=dtype_id)
def test_views_other_dtypes(dtype):
    x = make_input((4, 6, 5), dtype)
    fn = lambda x: (x.permute(2, 0, 1)[::2], x[1, ::2], x.reshape(-1)[3::7], x.transpose(0, 1).flatten(),
                    x[:, :1].expand(4, 6, 5), x.unsqueeze(1)[..., 2])
    check(fn, (x,))


def test_view_of_zero_dim_and_empty():
    s = make_input((), torch.float32)
    e = make_input((0, 3), torch.float32)
    fn = lambda s, e: (s.reshape(1, 1) * 2, s.unsqueeze(0).expand(5) + 1, e.t() * 2, e.reshape(3, 0) + 1,
                       e[:, 1] - 1, s.expand(2, 3).exp())
    check(fn, (s, e))


# ---- misc pointwise behaviour ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_broadcast_3d(dtype):
    a = make_input((3, 1, 5), dtype)
    b = make_input((4, 5), dtype)
    c = make_input((3, 4, 1), dtype)
    check(lambda a, b, c: (a * b + c, torch.where(a > b, a - c, b / (1 + c.abs())), (a + b).exp() - c), (a, b, c))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_single_output_shapes(shape):
    """One graph per shape (the sweeps put many shapes in one graph)."""
    x = make_input(shape, torch.float32)
    y = make_input(shape, torch.float32)
    check(lambda a, b: (a * b + 1).tanh() - b, (x, y))


def test_multiple_outputs_and_input_passthrough():
    x = make_input((45, 65), torch.float32)
    y = make_input((45, 65), torch.float32, layout="transposed")

    def fn(x, y):
        s = x + y
        return s, s * 2, x, (s.exp(), [y - 1]), {"a": s.sin(), "b": 3}
    check(fn, (x, y))


def test_constants_and_factories():
    x = make_input((45, 65), torch.float32)
    fn = lambda x: (x + torch.ones_like(x), x * torch.zeros_like(x), torch.full_like(x, 2.5) - x,
                    x + torch.scalar_tensor(3.0), torch.full((45, 65), 7, dtype=torch.int32) + x.int(),
                    torch.ones(65, dtype=torch.float64) * x, torch.zeros(45, 1) - x)
    check(fn, (x,))


def test_default_dtype_float64_promotes_int_exp():
    x = make_input((17,), torch.int32)
    torch.set_default_dtype(torch.float64)  # restored by conftest
    check(lambda v: (v.exp(), v / 2, v * 0.5, v.sqrt().abs()), (x.abs(),))


# ---- fusion ---------------------------------------------------------------------------------------
def ten_op_chain(x, y):
    a = x * y
    b = a + 1.0
    c = b.sin()
    d = c * c
    e = d - x
    f = e.exp()
    g = f / (y.abs() + 2.0)
    h = g.tanh()
    i = torch.maximum(h, x)
    return torch.sigmoid(i)


def test_fusion_ten_op_chain_is_one_kernel():
    x = make_input((45, 65), torch.float32)
    y = make_input((45, 65), torch.float32)
    f = check(ten_op_chain, (x, y))
    ks = kiln.kernels(f)
    assert len(ks) == 1, [k.name for k in ks]
    k = ks[0]
    assert k.target == "cpu"
    assert "define" in k.source
    assert k.asm.strip()
    # A third call is still a hit and still right with new values of the same shape.
    x2, y2 = make_input((45, 65), torch.float32), make_input((45, 65), torch.float32)
    before = kiln.counters()["cache_hits"]
    torch.testing.assert_close(f(x2, y2), ten_op_chain(x2, y2), rtol=1e-5, atol=1e-5)
    assert kiln.counters()["cache_hits"] == before + 1
    assert kiln.counters()["captures"] == 1


def test_fusion_with_broadcast_and_views_is_one_kernel():
    x = make_input((45, 65), torch.float32, layout="transposed")
    b = make_input((65,), torch.float32)
    f = check(lambda x, b: ((x + b).relu() * 2 - x.t().t()).sigmoid() * b.unsqueeze(0), (x, b))
    assert len(kiln.kernels(f)) == 1, [k.name for k in kiln.kernels(f)]


def test_fusion_multi_output_same_shape_is_one_kernel():
    x = make_input((33, 17), torch.float32)
    f = check(lambda x: (x.exp(), x.exp() + 1, (x * 2).sin()), (x,))
    assert len(kiln.kernels(f)) == 1, [k.name for k in kiln.kernels(f)]


# ---- larger / trickier programs ---------------------------------------------------------------------
def test_large_parallel_shapes():
    """Big enough for the thread pool to split the outer loop."""
    x = make_input((301, 1001), torch.float32, layout="transposed")
    y = make_input((1001,), torch.float32)
    z = make_input((301, 1001), torch.float64, layout="sliced")
    check(lambda x, y, z: ((x * y).exp() - 1, torch.where(x > y, x, z.float()), z * 2 + y), (x, y, z))


@pytest.mark.parametrize("dtype", INTS, ids=dtype_id)
def test_integer_overflow_wraps_like_eager(dtype):
    info = torch.iinfo(dtype)
    x = torch.tensor([info.max, info.min, info.max - 1, info.min + 1, 12345, -7, 0, 1] * 3, dtype=dtype)
    y = torch.tensor([1, -1, 2, 3, info.max, 9, -5, info.min] * 3, dtype=dtype)
    check(lambda a, b: (a + b, a - b, a * b, -a, a * 3, a + 1, a.abs()), (x, y))


@pytest.mark.parametrize("dtype", FLOATS, ids=dtype_id)
def test_expensive_broadcast_producers(dtype):
    """An expensive value read many times by a broadcasting consumer (kiln may materialise it)."""
    a = make_input((45, 1), dtype, low=-3, high=3)
    b = make_input((45, 65), dtype, layout="transposed")
    c = make_input((65,), dtype, low=0.1, high=2)
    check(lambda a, b: a.exp().sin() * b, (a, b))
    check(lambda b, c: b + c.log().tanh(), (b, c))
    check(lambda a, c: ((a.exp().sin() + c.log()).sigmoid(), a.exp().sin()), (a, c))


def test_output_joining_open_kernel_after_its_materialised_input():
    a = make_input((45, 1), torch.float32)
    b = make_input((45, 65), torch.float32)
    c = make_input((65,), torch.float32)
    check(lambda a, b, c: (a * b, b + c.exp()), (a, b, c))


def test_same_output_twice_and_aliased_inputs():
    x = make_input((6, 7), torch.float32)

    def fn(a, b, c):
        y = a * 2
        return y, y, a + b, c.exp(), y[::2]
    # The same tensor passed twice is guarded as one object (kiln.testing.check's shuffled call
    # passes fresh copies, which are distinct objects: a new variant, not a hit), so compare here.
    f = kiln.compile(fn)
    for _ in range(2):
        assert_same(f(x, x, x[1:, ::2]), fn(x, x, x[1:, ::2]))
    y = x.clone()
    assert_same(f(x, y, x[1:, ::2]), fn(x, y, x[1:, ::2]))  # distinct objects: recompiled, right
    check(lambda a, b: (a * b, a - b), (x[0], x[1]))
    check(lambda a: a[:, :1].expand(6, 7), (x,))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16], ids=dtype_id)
def test_small_integer_dtypes(dtype):
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -100), min(info.max, 200)
    x = make_input((45, 65), dtype, low=lo, high=hi, layout="transposed")
    y = make_input((65,), dtype, low=lo, high=hi, nonzero=True)
    edge = torch.tensor([info.min, info.max, 0, 1, info.max - 1, 7] * 3, dtype=dtype)
    fn = lambda x, y, e: (x + y, x - y, x * y, x * 3 + 1, x < y, x >= 5, torch.maximum(x, y), torch.minimum(x, y),
                          x // y, x % y, torch.fmod(x, y), x.abs(), x.to(torch.int32), x.float() / 3,
                          (x & y) | 5, ~x, e + e, e * e, e.abs(), torch.clamp(x, 10, 100), x.sign())
    check(fn, (x, y, edge))


def test_integer_narrowing_casts_wrap():
    x = torch.tensor([2**31 + 5, -(2**31) - 7, 2**40 + 3, 255, 256, -1, 2**15, -(2**15) - 1] * 3)
    check(lambda v: (v.int(), v.to(torch.int16), v.to(torch.uint8), v.to(torch.int8), v.bool(), v.float()), (x,))


def test_float64_to_float32_edge_casts():
    x = torch.tensor([1e300, -1e300, 1e-310, -1e-310, 3.4e38, 3.5e38, math.nan, math.inf, -0.0, 1 / 3] * 3,
                     dtype=torch.float64)
    check(lambda v: (v.float(), v.float().double(), v.bool()), (x,))


def test_none_and_ellipsis_indexing():
    x = make_input((4, 6, 5), torch.float32)
    check(lambda v: (v[None] * 2, v[:, None, ::2] + 1, v[..., None].exp(), v[1, None, 2:4], v[None, ..., 0]), (x,))


def test_output_layouts_follow_eager():
    """Outputs keep eager's strides, also around clone()/contiguous() of non-contiguous values."""
    x = make_input((6, 7), torch.float32)
    y = make_input((6,), torch.float32)
    check(lambda x, y: (lambda s: (s, s.reshape(-1)))(x.abs().t() - y), (x, y))
    check(lambda x, y: (x.t() * 2).contiguous(), (x, y))
    check(lambda x, y: ((x.t() * 2).contiguous(), x.t() * 2), (x, y))
    check(lambda x, y: (x.t().contiguous(), x.t().clone() + 1, x.t().clone()), (x, y))
    check(lambda x, y: (x.t() - y).clone(memory_format=torch.contiguous_format), (x, y))


@pytest.mark.parametrize("to", [torch.int8, torch.int32, torch.int64])
def test_nan_and_out_of_range_to_int_after_math_on_ints(to):
    # int(log1p(float(x))) for x < -1 is int(nan): x86's "integer indefinite" (the minimum, then
    # truncated) as eager gives it; LLVM's fptosi made it poison and a frozen poison came out
    # as whatever the log1p polynomial left (-176)
    x = torch.tensor([-5, 3, -2, 7, -100, 4, -1, 0, -9] * 3, dtype=torch.int32)
    check(lambda v: (torch.log1p(v).to(to), torch.log(v).to(to), (v * 1e12).to(to)), (x,))


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_group_norm_with_infinite_weights_and_inputs_follows_eager(affine):
    # torch computes y = x * (rstd * w) + (b - mean * rstd * w) per channel: with w = inf that is
    # inf - inf = nan where (x - mean) * rstd * w would be +-inf; kiln groups it the same way
    x, w, b = make_input((2, 8, 4, 3)), make_input((8,)), make_input((8,))
    w[6] = float("inf")
    b[4] = float("-inf")
    x[1, 3, 2, 1] = float("nan")
    x[0, 0, 1, 1] = float("inf")
    has_w, has_b = affine
    check(lambda x, w, b: F.group_norm(x, 4, w if has_w else None, b if has_b else None, 1e-5), (x, w, b))


def test_var_and_std_of_equal_values_are_exactly_zero():
    # eager accumulates in double: the std of seven copies of pi/4 is 0, so 0 * inf is nan; a
    # float32 mean left a residue of ~1e-8 that made it inf
    x = torch.full((7, 2, 1), math.pi / 4).expand(7, 2, 1).contiguous()
    y = torch.tensor([[float("inf"), -float("inf"), 2.0]])
    f = check(lambda x, y: (x.std(0, keepdim=True) * y, x.var(0), x.std((0, 1))), (x, y))
    assert kiln.counters()["eager_calls"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_of_math_intrinsics_keep_inf_times_zero(dtype):
    # LLVM rewrote exp2(a) * exp2(b) as exp2(a + b) inside a short product reduction (allowed by
    # its reassociation flag): exp2(1e30) * exp2(-1e30) gave inf where eager's inf * 0 is nan.
    x = torch.tensor([[1e30, 1.0], [-1e30, 2.0], [200.0, -3.0]], dtype=dtype)
    for fn in (lambda t: t.exp2().prod(0), lambda t: t.exp().prod(0), lambda t: torch.pow(t, 3.0).prod(0),
               lambda t: t.abs().sqrt().prod(0)):
        kiln.reset()
        check(fn, (x,))


def test_float32_product_is_the_true_product_rounded_once():
    # In float32 a running product can overflow (1e30 * 1e30 = inf) before a zero later in the
    # row (inf * -0 = nan), or underflow to 0 before a large factor: which happens depends on the
    # order of the lanes alone, so eager's own answer changes with its vector width (fuzz seed
    # 7110810: eager -0, kiln nan). kiln multiplies float32 rows in float64: the true product,
    # rounded once to float32.
    x = torch.ones(3, 36) + torch.rand(3, 36, generator=torch.Generator().manual_seed(0)) * 0.1
    x[0, [3, 20]], x[0, 33] = 1e30, -0.0
    x[1, [0, 17]], x[1, [5, 30]] = 1e-30, 1e30
    x[2, [1, 2]] = 1e20
    fn = lambda t: (t.prod(1), t.t().contiguous().prod(0), t[:, :4].prod(1), t.prod())  # noqa: E731
    f = kiln.compile(fn)
    f(x)  # the capturing call runs eagerly under the tracer: eager's answer
    for got, ref in zip(f(x), fn(x.double())):
        assert_same(got, ref.float())
    assert kiln.counters()["eager_calls"] == 0
    # without overflow it is eager's product
    check(lambda t: t.prod(1), (torch.rand(5, 40) + 0.5,))


def test_layer_norm_and_group_norm_of_constant_rows_are_exact():
    # The mean a normalisation subtracts is summed in float64: a constant row's mean is the
    # constant, so x - mean is 0 and the output is the bias (a float32 sum left a residue that
    # rstd ~ 1/sqrt(eps) scaled to -0.012 for a row of 123.456s), and an infinite weight gives
    # eager's 0 * inf = nan (fuzz seed 7117275).
    x = torch.full((5, 34), 1e6)
    x[1], x[2], x[3] = 123.456, -7.77e5, 0.1
    x[4] = torch.randn(34)
    w = torch.randn(34)
    w[3] = float("inf")
    b = torch.randn(34)
    check(lambda t, w, b: F.layer_norm(t, (34,), w, b), (x, w, b))
    g = x.view(1, 5, 34).expand(2, 5, 34).reshape(2, 10, 17)
    check(lambda t: F.group_norm(t, 5), (g,))


def test_layer_norm_of_an_expensive_producer_computes_it_once():
    # Note [Reusing a reduced value]: the mean phase keeps gelu(x) + p in the output (the mean
    # folds it widened to float64), and the variance and store phases read it back: one erf per
    # element, even when x is read across its layout (a permuted conv output, as in Whisper).
    x = make_input((2, 48, 40)).permute(0, 2, 1)
    p, w, b = make_input((40, 48)), make_input((48,)), make_input((48,))
    f = check(lambda t: F.layer_norm(F.gelu(t) + p, (48,), w, b), (x,))
    (ir,) = [k.loop_ir for k in kiln.kernels(f)]
    # the mean phase computes it (for its sum and the kept store); the variance phase (acc1)
    # and the store phase after it read it back
    assert "erf(" in ir.split("acc1")[0] and "erf(" not in ir.split("acc1", 1)[1], ir


def test_layer_norm_and_group_norm_of_rows_with_huge_deviations():
    # A row holding 1e30 has deviations whose float32 squares overflow: the variance is summed
    # in float64, so the row normalises to finite values (float32 variance: inf, rstd 0, row 0)
    # and agrees with eager wherever eager is finite (fuzz seeds 7410972, 7419299).
    x = make_input((6, 7))
    x[0, 2], x[1, :2], x[2, 5] = 1e30, -3e25, float("inf")
    for fn, rows in ((lambda t: F.layer_norm(t, (7,), eps=1e-3), [0, 1]),
                     (lambda t: F.group_norm(t.view(3, 2, 7), 2), [0])):
        f = kiln.compile(fn)
        f(x)
        got, eager, exact = f(x), fn(x), fn(x.double()).float()
        finite = torch.isfinite(eager)
        assert_same(got[finite], eager[finite])
        assert bool(torch.isfinite(got[rows]).all())
        assert_same(got[rows], exact[rows])
