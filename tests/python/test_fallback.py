"""Eager fallback: graph breaks, ops kiln cannot lower, in-place ops, errors, explain()."""

import numpy as np
import pytest
import torch

import kiln
from kiln.testing import assert_same, check, make_input


class Delta:
    def __init__(self):
        self.start = kiln.counters()

    def __getitem__(self, key):
        return kiln.counters()[key] - self.start[key]


# ---- data-dependent Python ------------------------------------------------------------------------
def branchy(x):
    y = x * 2
    if y.sum() > 0:  # bool(tensor): data-dependent control flow
        return y + 1
    return y - 1


def uses_item(x):
    m = x.abs().max().item()
    return x / (m + 1.0)


@pytest.mark.parametrize("fn", [branchy, uses_item], ids=["bool", "item"])
def test_data_dependent_python_is_a_graph_break(fn):
    f = kiln.compile(fn)
    d = Delta()
    pos, neg = make_input((4, 5), low=0.1, high=1.0), make_input((4, 5), low=-1.0, high=-0.1)
    for x in (pos, pos, neg, neg, pos):
        assert_same(f(x), fn(x))
    assert d["graph_breaks"] >= 1
    # The value read becomes a key of a tree of compiled segments: nothing runs wholly eager.
    assert d["eager_calls"] == 0
    if fn is branchy:
        # Both branches are compiled now; new inputs of either sign reuse them.
        before = kiln.counters()
        for x in (make_input((4, 5), low=0.2, high=0.9), make_input((4, 5), low=-0.9, high=-0.2)):
            assert_same(f(x), fn(x))
        after = kiln.counters()
        assert after["cache_hits"] - before["cache_hits"] == 2
        assert after["captures"] == before["captures"]


def test_int_and_tolist_are_graph_breaks():
    def g(x):
        n = int(x[0].round())
        return x * n + sum(x[:2].tolist())
    f = kiln.compile(g)
    d = Delta()
    for lo in (1.0, 3.0):
        x = make_input((5,), low=lo, high=lo + 0.4)
        assert_same(f(x), g(x))
        assert_same(f(x), g(x))
    assert d["graph_breaks"] >= 1


def test_numpy_stops_capture():
    def g(x):
        y = x * 2
        n = y.numpy()
        return y + float(n.sum())
    f = kiln.compile(g)
    d = Delta()
    for _ in range(2):
        x = make_input((4, 5))
        assert_same(f(x), g(x))
        assert_same(f(x), g(x))
    assert d["graph_breaks"] >= 1
    assert any("numpy" in r for r in kiln.counters()["reasons"]), kiln.counters()["reasons"]


def test_numpy_array_conversion_stops_capture():
    def g(x):
        return x + float(np.asarray(x).max())
    f = kiln.compile(g)
    for _ in range(2):
        x = make_input((6,))
        assert_same(f(x), g(x))
        assert_same(f(x), g(x))
    assert kiln.counters()["graph_breaks"] >= 1


# ---- ops without a lowering --------------------------------------------------------------------------
@pytest.mark.parametrize("name,fn,op", [
    ("cummax", lambda x: torch.cummax(x * 2, 0).values + 1, "cummax"),
    ("sort", lambda x: torch.sort(x.exp(), dim=1).values - 1, "sort"),
    ("atan2", lambda x: torch.atan2(x, x + 2) * 3, "atan2"),
])
def test_op_without_lowering_falls_back(name, fn, op):
    f = kiln.compile(fn)
    d = Delta()
    for _ in range(2):
        x = make_input((4, 5))
        assert_same(f(x), fn(x))
        assert_same(f(x), fn(x))
    assert d["fallback_ops"] >= 1
    counts = kiln.counters()["fallback_op_counts"]
    assert any(op in k for k in counts), counts


def test_tensor_constant_made_inside_function_compiles():
    """torch.tensor([...]) of literals in the body is a constant of the code, never a graph hole."""
    def g(x):
        return x + torch.tensor([1.0, 2.0, 3.0])
    check(g, (make_input((4, 3)),))
    assert kiln.counters()["fallback_ops"] == 0


STATE = np.arange(3, dtype=np.float32)


def reads_numpy_state(x):
    return x * torch.from_numpy(STATE)


def test_tensor_from_untraced_path_is_never_baked_in():
    f = kiln.compile(reads_numpy_state)
    x = make_input((2, 3))
    assert_same(f(x), reads_numpy_state(x))
    STATE[:] = [5.0, -1.0, 2.0]  # a compiled program with the old values baked in would be wrong
    assert_same(f(x), reads_numpy_state(x))
    STATE[:] = np.arange(3)


# ---- in-place ops on inputs ----------------------------------------------------------------------------
def test_inplace_on_input_matches_eager():
    def g(x):
        x.add_(1)
        return x * 2
    x_eager = make_input((4, 5))
    x_kiln = x_eager.clone()
    f = kiln.compile(g)
    for _ in range(3):
        want = g(x_eager)
        got = f(x_kiln)
        assert_same(got, want)
        torch.testing.assert_close(x_kiln, x_eager, rtol=0, atol=0)  # mutated exactly once per call


def test_inplace_on_input_view_matches_eager():
    def g(x):
        x[0].mul_(-1)
        return x + 1
    x_eager = make_input((3, 4))
    x_kiln = x_eager.clone()
    f = kiln.compile(g)
    for _ in range(2):
        assert_same(f(x_kiln), g(x_eager))
        torch.testing.assert_close(x_kiln, x_eager, rtol=0, atol=0)


def test_inplace_on_intermediate():
    def g(x):
        y = x * 2
        y.add_(1)
        y.clamp_(min=0)
        return y
    x = make_input((4, 5))
    f = kiln.compile(g)
    for _ in range(2):
        assert_same(f(x), g(x))


def test_inplace_on_captured_tensor_matches_eager():
    acc = torch.zeros(4)

    def g(x):
        acc.add_(x)
        return acc * 1
    f = kiln.compile(g)
    x = make_input((4,))
    r1 = f(x).clone()
    r2 = f(x).clone()
    torch.testing.assert_close(r1, x)
    torch.testing.assert_close(r2, 2 * x)
    torch.testing.assert_close(acc, 2 * x)


# ---- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("op", [
    lambda a, b: a // b,
    lambda a, b: a % b,
    lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    lambda a, b: torch.fmod(a, b) + 1,
], ids=["floordiv", "remainder", "div_trunc", "fmod"])
def test_integer_division_by_zero_raises_like_eager(op, dtype):
    f = kiln.compile(op)
    a = make_input((33,), dtype, low=-50, high=50)
    b = make_input((33,), dtype, nonzero=True)
    f(a, b)
    assert_same(f(a, b), op(a, b))
    assert kiln.counters()["cache_hits"] == 1
    b0 = b.clone()
    b0[5] = 0
    with pytest.raises(Exception) as eager_err:
        op(a, b0)
    with pytest.raises(type(eager_err.value)) as kiln_err:
        f(a, b0)
    assert str(kiln_err.value) == str(eager_err.value)
    assert_same(f(a, b), op(a, b))  # still fine afterwards


def test_user_error_on_capturing_call_propagates():
    g = lambda a, b: a + b
    f = kiln.compile(g)
    with pytest.raises(RuntimeError):
        f(make_input((3,)), make_input((4,)))
    a, b = make_input((3,)), make_input((3,))
    assert_same(f(a, b), g(a, b))


def test_shape_error_propagates_from_compiled_function():
    g = lambda a, b: a * b
    f = kiln.compile(g)
    a, b = make_input((3,)), make_input((3,))
    f(a, b)
    f(a, b)
    with pytest.raises(RuntimeError) as eager_err:
        g(make_input((3,)), make_input((4,)))
    with pytest.raises(RuntimeError) as kiln_err:
        f(make_input((3,)), make_input((4,)))
    assert str(kiln_err.value) == str(eager_err.value)


# ---- unsupported dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_unsupported_dtype_falls_back(dtype):
    g = lambda x: (x * 2 + 1).exp()
    x = torch.randn(4, 5, dtype=dtype)
    check(g, (x,), expect_compiled=False, atol=1e-2, rtol=1e-2)


def test_cast_to_unsupported_dtype_inside_falls_back():
    g = lambda x: (x.to(torch.complex64) * 3).real + 1
    check(g, (make_input((4, 5)),), expect_compiled=False)
    assert any("complex64" in r for r in kiln.counters()["reasons"]), kiln.counters()["reasons"]


# ---- explain ----------------------------------------------------------------------------------------------
def test_explain_clean_function():
    e = kiln.explain(lambda x, y: (x * y).sin() + 1, make_input((4, 5)), make_input((5,)))
    assert e.graph_count == 1
    assert e.graph_breaks == [] and e.fallback_ops == []
    assert e.guards and any("float32" in g for g in e.guards)
    assert any("4, 5" in g or "4,5" in g for g in e.guards), e.guards
    text = str(e)
    assert "graphs: 1" in text and "guards" in text


def test_explain_graph_break_reports_location():
    e = kiln.explain(branchy, make_input((4, 5)))
    assert e.graph_breaks, str(e)
    reason, location = e.graph_breaks[0]
    assert reason and "test_fallback.py" in location, location
    assert "if y.sum() > 0" in location  # the source line
    assert "graph breaks: 1" in str(e)


def test_explain_fallback_op():
    e = kiln.explain(lambda x: torch.cummax(x, 0).values * 2, make_input((4, 5)))
    assert e.fallback_ops and any("cummax" in op for op, _ in e.fallback_ops), e.fallback_ops
    assert "cummax" in str(e)


def test_explain_lists_fallback_ops_of_segments_after_a_graph_break():
    def f(x):
        y = x.cummax(0).values  # in the first segment
        if y.sum() > 0:
            return torch.sort(y, 0).values * 2  # in the second
        return y - 1
    x = make_input((4, 3)).abs()
    e = kiln.explain(f, x)
    assert e.graph_count == 2 and len(e.graph_breaks) == 1, str(e)
    ops = [op for op, _ in e.fallback_ops]
    assert any("cummax" in op for op in ops) and any("sort" in op for op in ops), ops
    assert len(ops) == 2, ops  # once each, not once per segment


def test_explain_does_not_touch_the_compiled_function():
    f = kiln.compile(lambda x: x * 2)
    x = make_input((3,))
    f(x)
    kiln.explain(f, x)
    f(x)
    assert kiln.counters()["cache_hits"] == 1 and len(kiln.kernels(f)) == 1


def test_explain_module():
    m = torch.nn.Hardtanh(-0.5, 0.5)
    e = kiln.explain(kiln.compile(m), make_input((4, 5)))
    assert e.graph_count == 1 and e.kernels


def test_debug_dir_writes_artifacts(tmp_path):
    with kiln.config.patch(debug_dir=str(tmp_path)):
        f = kiln.compile(lambda x: x.exp() * 2)
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("error")  # no "cannot write artifacts" warning
            f(make_input((4, 5)))
            f(make_input((7,)))
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(dirs) == 2, dirs
    for d in dirs:
        names = {p.name for p in d.iterdir()}
        assert {"graph.txt", "guards.txt"} <= names, names


def test_unsupported_lowering_is_a_quiet_fallback():
    # Regression: _C created Unsupported/InternalError without registering a translator, so a
    # known limitation reached Python as a plain RuntimeError and warned "compiling failed".
    g = lambda x: x * 2
    f = kiln.compile(g)
    x = torch.randn(4, dtype=torch.complex64)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # a known limitation is not a failure warning
        assert_same(f(x), g(x))
    assert any("complex64" in r and "internal" not in r for r in kiln.counters()["reasons"]), kiln.counters()["reasons"]


@pytest.mark.parametrize("case", ["linear", "sliced_transposed", "offset_view", "expanded", "noncontiguous_arg"])
def test_views_of_arguments_reach_fallbacks_without_copies(case):
    # A fallback's operand that is a strided view of an argument (W.t() in a linear layer) is
    # passed as that view (as_strided over the argument), not copied by a kernel every call.
    g, args = {
        "linear": (lambda x, w, b: torch.nn.functional.linear(x, w, b).relu(),
                   (make_input((7, 33)), make_input((19, 33)), make_input((19,)))),
        "sliced_transposed": (lambda x, w: torch.mm(x[1:, ::2], w[::3].t()[:, 2:]) * 2,
                              (make_input((9, 64)), make_input((90, 32)))),
        "offset_view": (lambda x, w: torch.mm(x[3:, 5:21], w[2, 1:17].unsqueeze(1)) + 1,
                        (make_input((11, 30)), make_input((4, 20)))),
        "expanded": (lambda x, w: torch.bmm(x, w.expand(3, 6, 4)) - 1,
                     (make_input((3, 5, 6)), make_input((6, 4)))),
        "noncontiguous_arg": (lambda x, w: torch.mm(x[:, 1:].t().t(), w[:, 1:].t()) * 3,
                              (make_input((12, 8)).t(), make_input((5, 12)))),
    }[case]
    f = kiln.compile(g)
    for _ in range(2):
        assert_same(f(*args), g(*args))
    assert not any(k.name.endswith("_copy") for k in kiln.kernels(f)), [k.name for k in kiln.kernels(f)]
    assert kiln.counters()["eager_calls"] == 0
    # new values of the same layout: the view is rebuilt over the new arguments
    fresh = [a.clone() if a.is_contiguous() else a.t().clone().t() for a in args]
    fresh = [a.mul_(-0.5) for a in fresh]
    assert_same(f(*fresh), g(*fresh))


def test_recurrence_through_fallbacks_does_not_recompute_earlier_steps():
    # An LSTM-like cell state read after the next step's matmul (a fallback) is materialised;
    # it used to be recomputed, with every earlier step, inside each later kernel.
    def g(xs, h, c, w):
        for t in range(xs.shape[0]):
            gates = torch.mm(xs[t] + h, w)
            i, f = gates.chunk(2, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(i)
            h = torch.tanh(c)
        return h, c
    args = (make_input((6, 3, 4)), make_input((3, 4)), make_input((3, 4)), make_input((4, 8)))
    f = kiln.compile(g)
    for _ in range(2):
        assert_same(f(*args), g(*args))
    counts = [k.loop_ir.count("sigmoid") + k.loop_ir.count("tanh") for k in kiln.kernels(f)]
    assert max(counts) <= 2 * min(c for c in counts if c), counts


def test_torch_tensor_of_python_numbers_is_a_constant_of_the_code():
    # torch.tensor([...]) of Python numbers (nested lists, ints, bools, empty) compiles: its
    # values are baked in, as a number passed to any op is. One made from a numpy array (whose
    # contents no guard covers) still stops the capture, and a change to the array is seen.
    def f(x, n):
        s = torch.tensor([1.5, -2.0, n * 0.5])
        m = torch.tensor([[True, False, True]])
        k = torch.tensor([[3], [4], [5], [-1]])
        return (x * s).masked_fill(m, -1.0) + k + torch.tensor([], dtype=torch.float32).sum() + x.new_tensor([0.5])

    c = kiln.compile(f)
    for n in (3, 3, 7):
        x = torch.randn(4, 3)
        torch.testing.assert_close(c(x, n), f(x, n), rtol=0, atol=0)
    counts = kiln.counters()
    assert counts["eager_calls"] == 0 and counts["fallback_ops"] == 0, counts
    assert counts["captures"] == 2  # n is guarded: 7 is a new specialisation

    arr = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    g = lambda x: x * torch.tensor(arr)  # noqa: E731
    d = kiln.compile(g)
    x = torch.randn(4, 3)
    d(x)
    arr[0] = 100.0
    torch.testing.assert_close(d(x), g(x), rtol=0, atol=0)
    assert any("lift_fresh" in r for r in kiln.counters()["reasons"])
