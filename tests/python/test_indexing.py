"""Assembly and indexing ops: cat/stack/split, index_select/gather/embedding/x[idx], masked_fill,
tril/triu, arange, flip, pad, repeat, roll — lowered to index arithmetic (no copies), with
out-of-range indices raising eager's error rather than reading out of bounds."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, check, make_input

X = make_input((6, 8), torch.float32)
Y = make_input((6, 8), torch.float32)

CASES = {
    "cat": (lambda a, b: torch.cat([a * 2, b.exp()], 1) + 1, (X, Y)),
    "cat_dim0_three": (lambda a, b: torch.cat([a, b, a[:2]], 0).tanh(), (X, Y)),
    "stack": (lambda a, b: torch.stack([a, b], 0).sum(0), (X, Y)),
    "stack_last": (lambda a, b: torch.stack([a, b], -1) * 2, (X, Y)),
    "split": (lambda a: [t * 2 for t in a.split(3, dim=1)], (X,)),
    "split_sizes": (lambda a: [t.sum(1) for t in a.split([2, 5, 1], dim=1)], (X,)),
    "chunk": (lambda a: [t + 1 for t in a.chunk(2, 0)], (X,)),
    "unbind": (lambda a: [t * 3 for t in a.unbind(0)], (X,)),
    "masked_fill": (lambda a: a.masked_fill(a > 0, -1.0), (X,)),
    "masked_fill_tensor": (lambda a, b, v: a.masked_fill(b < 0, v), (X, Y, torch.tensor(2.5))),
    "tril_triu": (lambda a: a.tril() + a.triu(1) * 2 + a.tril(-2), (X,)),
    "arange_int": (lambda a: a * torch.arange(8), (X,)),
    "arange_float": (lambda a: a * torch.arange(0, 4, 0.5), (X,)),
    "arange_start": (lambda a: a + torch.arange(3, 11), (X,)),
    "flip": (lambda a: a.flip(1) - a.flip(0, 1), (X,)),
    "pad": (lambda a: F.pad(a, (1, 2, 0, 3), value=0.5) * 2, (X,)),
    "pad_last_only": (lambda a: F.pad(a.exp(), (3, 0)), (X,)),
    "repeat": (lambda a: a.repeat(2, 3) + 1, (X,)),
    "repeat_new_dim": (lambda a: a[0].repeat(3, 1, 2), (X,)),
    "roll": (lambda a: a.roll(2, 1) + a.roll(-1, 0), (X,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_assembly_ops_compile_and_match(name):
    fn, args = CASES[name]
    check(fn, args)
    assert not kiln.counters()["fallback_op_counts"], kiln.counters()["fallback_op_counts"]


def test_gathers_match():
    idx = torch.tensor([3, 0, 5, 5])
    check(lambda a, i: a.index_select(0, i) * 2, (X, idx))
    check(lambda a, i: a.index_select(1, i).exp(), (X, idx))
    check(lambda a, i: a.gather(1, i) + 1, (X, torch.randint(0, 8, (6, 3))))
    check(lambda i, w: F.embedding(i, w) * 2, (torch.randint(0, 10, (3, 5)), make_input((10, 4))))
    check(lambda a, i: a[i] + 1, (X, torch.tensor([-1, 2, 0])))
    assert not kiln.counters()["fallback_op_counts"]


@pytest.mark.parametrize("bad", [[0, 99], [-7, 1]])
def test_out_of_range_index_raises_like_eager(bad):
    fn = lambda a, i: a.index_select(0, i) * 2  # noqa: E731
    f = kiln.compile(fn)
    good = torch.tensor([1, 2])
    f(X, good)
    f(X, good)
    with pytest.raises(Exception) as want:
        fn(X, torch.tensor(bad))
    with pytest.raises(type(want.value)):
        f(X, torch.tensor(bad))


def test_other_index_forms_run_as_fallbacks():
    # index tensors on dims apart (torch moves their dims to the front): an eager op in the program
    fn = lambda a, i: a[i, :, i] + 1  # noqa: E731
    x = make_input((4, 3, 5))
    f = kiln.compile(fn)
    for i in ([1, 2], [0, 3], [3, 3]):
        torch.testing.assert_close(f(x, torch.tensor(i)), fn(x, torch.tensor(i)))
    c = kiln.counters()
    assert c["fallback_op_counts"].get("aten.index.Tensor", 0) == 1 and c["cache_hits"] == 2


def test_index_along_a_later_dim_is_a_gather():
    fn = lambda a, i: a[:, i] + 1  # noqa: E731
    f = kiln.compile(fn)
    for i in ([1, 2], [0, 7], [3, -3]):
        torch.testing.assert_close(f(X, torch.tensor(i)), fn(X, torch.tensor(i)))
    c = kiln.counters()
    assert not c["fallback_op_counts"] and c["cache_hits"] == 2


@pytest.mark.parametrize("case", ["last_dim", "viewed", "middle_dim", "uneven", "with_empty", "pad", "roll"])
def test_concat_loops_are_cut_at_piece_boundaries(case):
    # Note [Splitting loops at select boundaries]: each element is loaded from its own piece,
    # not picked by a chain of selects that loads every piece.
    xs = [make_input((6, 8)) for _ in range(5)]
    g = {
        "last_dim": lambda *xs: torch.cat(xs, 1) * 2,
        "viewed": lambda *xs: (torch.cat(xs, 1).view(6, 5, 8) + 1).sum(-1),
        "middle_dim": lambda *xs: torch.cat([x.view(2, 3, 8) for x in xs], 1).exp(),
        "uneven": lambda *xs: torch.cat([xs[0][:, :3], xs[1], xs[2][:, 5:]], 1) - 1,
        "with_empty": lambda *xs: torch.cat([xs[0], xs[1][:, :0], xs[2]], 1) * 3,
        "pad": lambda *xs: torch.nn.functional.pad(xs[0], (2, 3)) + 1,
        "roll": lambda *xs: torch.roll(xs[0], 3, 1) * 2,
    }[case]
    f = kiln.compile(g)
    for _ in range(2):
        assert_same(f(*xs), g(*xs))
    fresh = [x * -1.5 for x in xs]
    assert_same(f(*fresh), g(*fresh))
    if case != "viewed":  # viewed: fused into a row kernel (a reduction), which is not cut
        assert not any("select" in k.loop_ir for k in kiln.kernels(f)), [k.loop_ir for k in kiln.kernels(f)]


@pytest.mark.parametrize("case", ["two_dims", "after_slice", "middle", "three", "int32", "transposed",
                                  "empty_index", "broadcast_rows", "one_2d_index"])
def test_advanced_indexing_with_several_index_tensors(case):
    # x[i, j] (adjacent integer index tensors, broadcast together, negatives wrapped): one
    # position into the indexed dims, read by a gather: no fallback.
    x = make_input((4, 5, 6, 3))
    i = torch.tensor([[0], [3], [-1]])
    j = torch.tensor([1, -2, 4, 0])
    fn, args = {
        "two_dims": (lambda x, i, j: x[i, j] * 2, (x, i, j)),
        "after_slice": (lambda x, i, j: x[:, i, j] + 1, (x, i, j)),
        "middle": (lambda x, i: x[:, :, i] - 1, (x, i)),
        "three": (lambda x, i, j: x[i, j, j % 3] * 3, (x, i, j)),
        "int32": (lambda x, i, j: x[i.int(), j.int()], (x, i, j)),
        "transposed": (lambda x, i, j: x.transpose(0, 2)[j, i] + 0.5, (x, i, j)),
        "empty_index": (lambda x, i: x[i[:0], i[:0]] + 1, (x, i)),
        "broadcast_rows": (lambda x, j: x[torch.arange(4).unsqueeze(1), j.clamp(0, 4)] * 2, (x, j)),
        "one_2d_index": (lambda x, i: x[i] + 1, (x, i)),
    }[case]
    f = check(fn, args)
    c = kiln.counters()
    assert not c["fallback_op_counts"] and c["eager_calls"] == 0, c


@pytest.mark.parametrize("bad", [[[0], [4], [1]], [[0], [-5], [1]]])
def test_advanced_index_out_of_range_raises_like_eager(bad):
    # j out of its own dim's range must not read another row's element (2 * 5 + 5 is element
    # [3, 0] of the flattened dims): the position is invalid, the call is redone eagerly, which raises.
    x = make_input((4, 5))
    fn = lambda x, i, j: x[i, j] * 2  # noqa: E731
    f = kiln.compile(fn)
    f(x, torch.tensor([[0], [1], [2]]), torch.tensor([1, 2]))
    with pytest.raises(IndexError):
        f(x, torch.tensor(bad), torch.tensor([1, 2]))
    with pytest.raises(IndexError):
        f(x, torch.tensor([[0], [1], [2]]), torch.tensor([1, 5]))


@pytest.mark.parametrize("case", ["index_select", "getitem", "embedding", "gather", "advanced"])
def test_an_index_out_of_range_raises_even_where_its_element_is_not_read(case):
    # Only element 0 of the gathered value is used; eager still raises for the bad index.
    fn, good, bad = {
        "index_select": (lambda x, i: torch.index_select(x, 0, i)[0] * 2, torch.tensor([0, 1]), torch.tensor([0, 9])),
        "getitem": (lambda x, i: x[i][0] + 1, torch.tensor([0, 1]), torch.tensor([0, -9])),
        "embedding": (lambda x, i: F.embedding(i, x)[0] + 1, torch.tensor([0, 1]), torch.tensor([0, 5])),
        "gather": (lambda x, i: torch.gather(x, 1, i)[:, 0] + 1, torch.tensor([[0, 1]] * 5), torch.tensor([[0, 7]] * 5)),
        "advanced": (lambda x, i: x[i, i][0] + 1, torch.tensor([0, 1]), torch.tensor([0, 3])),
    }[case]
    x = make_input((5, 3))
    f = kiln.compile(fn)
    f(x, good)
    assert_same(f(x, good), fn(x, good))
    with pytest.raises((IndexError, RuntimeError)) as eager_error:
        fn(x, bad)
    with pytest.raises(eager_error.type):
        f(x, bad)


def test_no_argument_written_in_place_when_an_index_fails():
    # The gather is checked whole in a kernel before the one writing the cache in place.
    def g(cache, x, idx):
        cache[:, 0:2] = x[idx]
        return cache.sum()
    f = kiln.compile(g)
    cache, x = make_input((3, 4, 5)), make_input((6, 5))
    f(cache.clone(), x, torch.tensor([0, 1]))
    f(cache.clone(), x, torch.tensor([0, 1]))
    written = cache.clone()
    with pytest.raises(IndexError):
        f(written, x, torch.tensor([0, 9]))
    assert_same(written, cache)


@pytest.mark.parametrize("case", ["scalar", "zero_dim", "row", "leading_dims", "in_place_on_argument", "nan_inf"])
def test_masked_assignment_of_one_value_is_a_where(case):
    # x[mask] = v, v the same for every selected element: no data-dependent shape
    x = make_input((6, 8))
    if case == "scalar":
        fn = lambda a: _assign(a.clone(), a > 0.3, 0.0) * 2  # noqa: E731
    elif case == "zero_dim":
        fn = lambda a: _assign(a.clone(), a < 0, a.sum()) + 1  # noqa: E731
    elif case == "row":
        fn = lambda a: _assign(a.clone(), a[:, 0] > 0, a[0] * 3)  # noqa: E731
    elif case == "leading_dims":
        x = make_input((4, 3, 5))
        fn = lambda a: _assign(a.clone(), a.sum(-1) > 0, -1.5)  # noqa: E731
    elif case == "nan_inf":
        x = x.clone()
        x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -0.0
        fn = lambda a: _assign(a.clone(), a.isnan() | (a > 1), float("-inf"))  # noqa: E731
    else:
        def fn(a, m):
            a[m] = 7.0
            return a.sum()
        f = kiln.compile(fn)
        for s in range(2):
            a, m = make_input((6, 8)), make_input((6, 8), torch.bool)
            ae, ak = a.clone(), a.clone()
            assert_same(f(ak, m), fn(ae, m))
            assert_same(ak, ae, what="the argument after the call")
        assert not kiln.counters()["fallback_op_counts"], kiln.counters()
        return
    check(fn, (x,))
    assert not kiln.counters()["fallback_op_counts"], kiln.counters()


def _assign(t, m, v):
    t[m] = v
    return t


def test_masked_assignment_of_values_per_element_runs_eagerly_and_matches():
    def fn(a):
        y = a.clone()
        m = y < 0
        y[m] = torch.arange(int(m.sum()), dtype=y.dtype)  # one value per selected element, in order
        return y
    for s in range(3):
        x = make_input((5, 6))
        assert_same(kiln.compile(fn)(x), fn(x))
