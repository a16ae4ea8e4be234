"""Differential testing helpers: run a function eagerly and through kiln, compare everything.

    from kiln.testing import check, make_input
    x = make_input((45, 65), torch.float32, layout="transposed")
    check(lambda a: (a * 2).sin(), (x,))

`check` runs `fn` eagerly, then through a fresh `kiln.compile(fn)` twice: the first call
captures (and returns eager's own results), the second must be a compiled cache hit. Both
compiled results are compared with eager's (values with dtype-aware tolerances, NaN equal to
NaN; dtype, shape, device and the nesting of tuples/lists/dicts exactly), and the inputs must
come out of all three calls unchanged.
"""

import torch

from . import counters
from . import compile as _kiln_compile
from ._flatten import flatten

__all__ = ["check", "check_mutating", "make_input", "assert_same", "LAYOUTS", "default_tolerance"]

LAYOUTS = ("contiguous", "transposed", "sliced", "broadcast")

# (rtol, atol) by dtype. float32: a few ulps of relative error (vectorised exp/log/tanh/erf are
# polynomials, not libm) plus an absolute floor for results near zero. float64 is tighter.
_TOLERANCES = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def default_tolerance(dtype):
    """(rtol, atol) used for outputs of `dtype`; (0, 0) (exact) for bool and integers."""
    return _TOLERANCES.get(dtype, (0.0, 0.0))


def _leaves(obj):
    out = []
    spec = flatten(obj, out)
    return spec, out


def assert_same(actual, expected, atol=None, rtol=None, what="output", check_layout=False):
    """Asserts two (possibly nested) results match: same structure, and for every tensor the
    same dtype, shape and device and close values (equal_nan; exact for bool/int tensors,
    whatever atol/rtol say). atol/rtol override the float defaults of default_tolerance.
    check_layout: where eager's tensor is dense, the strides must match too."""
    spec_a, leaves_a = _leaves(actual)
    spec_e, leaves_e = _leaves(expected)
    assert spec_a == spec_e, f"{what}: structure {spec_a} differs from eager's {spec_e}"
    for i, (a, e) in enumerate(zip(leaves_a, leaves_e)):
        name = f"{what} leaf {i}"
        if not isinstance(e, torch.Tensor):
            assert type(a) is type(e) and a == e, f"{name}: {a!r} differs from eager's {e!r}"
            continue
        assert isinstance(a, torch.Tensor), f"{name}: got {type(a).__name__}, eager gave a tensor"
        assert a.dtype == e.dtype, f"{name}: dtype {a.dtype}, eager gave {e.dtype}"
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)}, eager gave {tuple(e.shape)}"
        assert a.device == e.device, f"{name}: device {a.device}, eager gave {e.device}"
        r, t = default_tolerance(e.dtype)
        if e.dtype.is_floating_point or e.dtype.is_complex:
            r = r if rtol is None else rtol
            t = t if atol is None else atol
        torch.testing.assert_close(a, e, rtol=r, atol=t, equal_nan=True, check_stride=False,
                                   msg=lambda m: f"{name}: {m}")
        if check_layout and _dense(e):
            assert _strides(a) == _strides(e), \
                f"{name}: strides {a.stride()}, eager gave {e.stride()} (sizes {tuple(e.shape)})"


def _strides(t):
    """Strides of the dims that matter (size > 1)."""
    return tuple(st for n, st in zip(t.shape, t.stride()) if n > 1)


def _dense(t):
    """True when t's elements exactly fill a block of memory in some dim order (no gaps, no
    overlap): then kiln writes outputs in eager's layout."""
    dims = sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1)
    expect = 1
    for st, n in dims:
        if st != expect:
            return False
        expect *= n
    return True


def _snapshot(inputs):
    return [t.clone() if isinstance(t, torch.Tensor) else None for t in _leaves(inputs)[1]]


def _assert_unchanged(inputs, snapshot, when):
    for i, (t, before) in enumerate(zip(_leaves(inputs)[1], snapshot)):
        if before is None:
            continue
        same = torch.equal(t, before) or (
            t.dtype.is_floating_point and bool(((t == before) | (t.isnan() & before.isnan())).all()))
        assert same, f"input leaf {i} was modified by the {when}"


def check(fn, inputs, atol=None, rtol=None, expect_compiled=True):
    """Compares `fn(*inputs)` run eagerly with a fresh `kiln.compile(fn)`, called twice.

    inputs: a tuple/list of positional arguments (a lone tensor is wrapped). expect_compiled:
    assert that the second call is a compiled cache hit (and the first a capture, neither run
    wholly eager), that compiled outputs have eager's strides where eager's are dense, and
    that a third call, on inputs of the same layout whose elements were shuffled, is a hit
    that still matches eager (nothing of the first call's data is baked in). Returns the
    compiled function, for further inspection (kiln.kernels)."""
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    snapshot = _snapshot(inputs)
    expected = fn(*inputs)
    _assert_unchanged(inputs, snapshot, "eager call")

    compiled = _kiln_compile(fn)
    before = counters()
    first = compiled(*inputs)
    mid = counters()
    second = compiled(*inputs)
    after = counters()
    _assert_unchanged(inputs, snapshot, "compiled calls")

    if expect_compiled:
        assert mid["captures"] == before["captures"] + 1, "the first call did not capture"
        assert mid["fallback_ops"] == before["fallback_ops"] and mid["graph_breaks"] == before["graph_breaks"], \
            f"the capture fell back: {_new_reasons(before, mid)}"
        assert after["cache_hits"] == mid["cache_hits"] + 1, \
            f"the second call was not a compiled cache hit: {_new_reasons(before, after)}"
        assert after["captures"] == mid["captures"], "the second call captured again"
        assert after["eager_calls"] == before["eager_calls"], \
            f"a call ran wholly eager: {_new_reasons(before, after)}"
    assert_same(first, expected, atol, rtol, what="capturing call")
    assert_same(second, expected, atol, rtol, what="compiled call", check_layout=expect_compiled)
    if expect_compiled:
        shuffled = _shuffled(inputs)
        want = fn(*shuffled)
        hits = counters()["cache_hits"]
        got = compiled(*shuffled)
        assert counters()["cache_hits"] == hits + 1, "a call on shuffled inputs was not a cache hit"
        assert_same(got, want, atol, rtol, what="call on shuffled inputs")
    return compiled


def assert_no_fallbacks():
    """Every call since the last kiln.reset() ran compiled, without an eager op inside (what a
    test of a lowering asserts after comparing with eager)."""
    from . import counters
    c = counters()
    assert not c["fallback_op_counts"] and c["eager_calls"] == 0, c


def check_mutating(fn, make_args, calls=3):
    """For a `fn` that mutates its arguments: eager and a fresh `kiln.compile(fn)` each get their
    own copies of `make_args(call)`, every call, and must agree on the result and on the
    arguments after it. Returns the compiled function."""
    f = _kiln_compile(fn)
    for s in range(calls):
        args = make_args(s)
        a_eager, a_kiln = [t.clone() for t in args], [t.clone() for t in args]
        assert_same(f(*a_kiln), fn(*a_eager))
        assert_same(a_kiln, a_eager, what="arguments after the call")
    return f


def _shuffled(inputs):
    """The inputs with each tensor's storage elements permuted (seeded): same sizes, strides,
    offsets and value set; tensors that shared a storage still share one."""
    gen = torch.Generator().manual_seed(1234)
    storages = {}
    out = []
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.numel() == 0:
            out.append(x)
            continue
        key = (x.untyped_storage().data_ptr(), x.dtype)
        if key not in storages:
            n = x.untyped_storage().nbytes() // x.element_size()
            flat = torch.empty(0, dtype=x.dtype).set_(x.untyped_storage(), 0, (n,), (1,))
            storages[key] = flat[torch.randperm(n, generator=gen)].clone()
        out.append(torch.as_strided(storages[key], x.shape, x.stride(), x.storage_offset()))
    return type(inputs)(out) if isinstance(inputs, tuple) else out


def _new_reasons(before, after):
    return {r: n - before["reasons"].get(r, 0) for r, n in after["reasons"].items()
            if n != before["reasons"].get(r, 0)}


# ---- inputs ----------------------------------------------------------------------------------
def _random(shape, dtype, low, high, generator):
    if dtype == torch.bool:
        t = torch.rand(shape, generator=generator) < 0.5
        flat = t.view(-1)
        if flat.numel() >= 2:  # never all True / all False
            flat[0], flat[1] = True, False
        return t
    if dtype.is_floating_point:
        lo = -1.5 if low is None else low
        hi = 1.5 if high is None else high
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        return (lo + (hi - lo) * u).to(dtype)
    info = torch.iinfo(dtype)
    lo = max(info.min, -10) if low is None else int(low)
    hi = min(info.max, 10) if high is None else int(high)
    t = torch.randint(lo, hi + 1, shape, dtype=torch.int64, generator=generator)
    flat = t.view(-1)
    if flat.numel() >= 2 and hi - lo >= 1 and bool((flat == flat[0]).all()):
        flat[1] = lo if int(flat[0]) != lo else hi  # never all one value
    return t.to(dtype)


def make_input(shape, dtype=torch.float32, layout="contiguous", low=None, high=None, nonzero=False,
               generator=None):
    """A random tensor of `shape` and `dtype` in one of LAYOUTS:

    contiguous  a fresh row-major tensor;
    transposed  a view whose last two dims are swapped in memory (needs rank >= 2);
    sliced      a view with a storage offset (dim 0 starts at 1) and a step of 2 on the last dim
                (needs rank >= 1);
    broadcast   an expanded view: dim 0 has stride 0 (needs rank >= 1).

    Values: floats uniform in [low, high] (default [-1.5, 1.5]), ints uniform in [low, high]
    (default [-10, 10], clipped to the dtype), bools random; never all one value when there
    are two elements or more. nonzero=True makes divisors: integer zeros become `high` (7 by
    default) and floats are kept at least 0.25 away from zero."""
    shape = tuple(shape)
    r = len(shape)
    if layout == "contiguous":
        base_shape = shape
    elif layout == "transposed":
        if r < 2:
            raise ValueError("layout='transposed' needs a rank >= 2 shape")
        base_shape = shape[:-2] + (shape[-1], shape[-2])
    elif layout == "sliced":
        if r < 1:
            raise ValueError("layout='sliced' needs a rank >= 1 shape")
        base_shape = (shape[0] + 1,) + shape[1:-1] + (2 * shape[-1],) if r > 1 else (2 * shape[0] + 1,)
    elif layout == "broadcast":
        if r < 1:
            raise ValueError("layout='broadcast' needs a rank >= 1 shape")
        base_shape = (1,) + shape[1:]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    base = _random(base_shape, dtype, low, high, generator)
    if nonzero and dtype.is_floating_point:
        push = torch.where(base < 0, -0.25, 0.25).to(dtype)
        base = torch.where(base.abs() < 0.25, base + push, base)
    elif nonzero and dtype != torch.bool:
        fill = high if high is not None else 7
        base = torch.where(base == 0, torch.tensor(fill, dtype=dtype), base)
    if layout == "contiguous":
        out = base
    elif layout == "transposed":
        out = base.transpose(-1, -2)
    elif layout == "sliced":
        out = base[1:, ..., ::2] if r > 1 else base[1::2]
    else:
        out = base.expand(shape)
    assert tuple(out.shape) == shape, (out.shape, shape)
    return out
