"""Mutation: in-place ops on intermediates, arguments, module buffers and through slice/select
views are functionalised; arguments and buffers see the writes after each call, as in eager."""

import pytest
import torch

import kiln
from kiln.testing import assert_same, check, check_mutating, make_input


def run_both(fn, make_args, calls=3):
    f = kiln.compile(fn)
    for _ in range(calls):
        args = make_args()
        ref = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        got, want = f(*args), fn(*ref)
        assert_same(got, want)
        for a, r in zip(args, ref):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, r), "an argument was not mutated as eager mutates it"
    return kiln.counters()


def test_kv_cache_slice_assignment_into_an_argument():
    def step(cache, k, p):
        cache[:, p:p + 2] = k * 2
        return cache.sum(1)
    c = run_both(step, lambda: (make_input((3, 6)), make_input((3, 2)), 2))
    assert c["eager_calls"] == 0 and c["cache_hits"] == 2


def test_setitem_scalar_and_select_views():
    def g(x):
        y = x * 1
        y[0] = 1.5
        y[1:3, ::2] += 1
        y[:, 0].mul_(3)
        return y
    c = run_both(g, lambda: (make_input((4, 5)),))
    assert c["eager_calls"] == 0


def test_views_of_a_written_tensor_see_the_write():
    def g(x):
        y = x * 1
        row = y[1]          # a view taken before the write
        y[1] = 0.25
        return row * 2      # eager: reads the written values
    c = run_both(g, lambda: (make_input((3, 4)),))
    assert c["eager_calls"] == 0


def test_untracked_view_of_a_written_tensor_runs_eagerly():
    def g(x):
        y = x * 1
        t = y.t()           # a view kiln does not track as a slice
        y[0] = 2.0
        return t + 1
    run_both(g, lambda: (make_input((3, 3)),))


def test_module_buffer_update_is_visible():
    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("total", torch.zeros(4))

        def forward(self, x):
            self.total.add_(x)
            return self.total * 2

    m = Counter()
    ref = Counter()
    f = kiln.compile(m)
    for _ in range(3):
        x = make_input((4,))
        assert_same(f(x), ref(x.clone()))
        assert torch.equal(m.total, ref.total)


def test_select_write_into_a_middle_dim():
    def g(x, v):
        x[:, 0] = v
        return x + 0
    run_both(g, lambda: (make_input((2, 3, 4)), make_input((2, 4))))


def test_thread_count_changes_between_calls():
    f = kiln.compile(lambda x: x * 2 + 1)
    x = make_input((1 << 16,))
    old = kiln.config.get("num_threads")
    try:
        for n in (2, 1, 2):
            kiln.config.set("num_threads", n)
            assert_same(f(x), x * 2 + 1)
    finally:
        kiln.config.set("num_threads", old)


def _inplace_kernels(f):
    return [k.name for k in kiln.kernels(f) if "slice_scatter" in k.name]


def test_slice_assignment_into_an_argument_is_written_in_place():
    # Note [In-place argument writes]: the cache update is a kernel over the new tokens only,
    # writing into the argument; the attention reads the argument afterwards.
    def g(cache, x, q):
        cache[:, 5:7] = x * 2
        keys = cache[:, :7]
        return (q.unsqueeze(1) * keys).sum(-1).softmax(-1)
    c = run_both(g, lambda: [make_input((3, 9, 4)), make_input((3, 2, 4)), make_input((3, 4))])
    assert c["eager_calls"] == 0
    f = kiln.compile(g)
    cache, x, q = make_input((3, 9, 4)), make_input((3, 2, 4)), make_input((3, 4))
    f(cache.clone(), x, q)
    out = f(cache, x, q)
    assert_same(cache[:, 5:7], x * 2)
    assert len(_inplace_kernels(f)) == 1
    assert_same(out, g(cache.clone(), x, q))


def test_inplace_write_with_step_and_noncontiguous_argument():
    def g(cache, x):
        cache[1:7:3] = x * 3 - 1
        return cache.sum(0)
    run_both(g, lambda: [make_input((8, 5)).t().contiguous().t(), make_input((2, 5))])
    run_both(g, lambda: [make_input((5, 8)).t(), make_input((2, 5))])


def test_scatter_source_reading_the_argument_is_not_written_in_place():
    # x[:, 1:] = x[:, :-1] reads the old value while writing it: kiln must not write in place.
    def g(x):
        x[:, 1:] = x[:, :-1] * 2
        return x + 1
    run_both(g, lambda: [make_input((4, 6))])


def test_returning_the_written_argument():
    def g(cache, x):
        cache[0] = x
        return cache
    f = kiln.compile(g)
    for _ in range(2):
        cache, x = make_input((3, 4)), make_input((4,))
        ref = cache.clone()
        out = f(cache, x)
        g(ref, x)
        assert_same(out, ref)
        assert_same(cache, ref)


def test_no_inplace_write_after_a_failure_eager_raises_before_it():
    # The index is checked (and fails) before the cache write: eager raises without writing, and
    # so must kiln, which stops at the failing kernel instead of writing the cache.
    def g(cache, x, idx):
        y = x[idx]  # raises IndexError when idx is out of range
        cache[:, 0:2] = y
        return cache.sum()
    f = kiln.compile(g)
    cache, x, good = make_input((3, 4, 5)), make_input((6, 5)), torch.tensor([[0, 1]] * 3)
    f(cache.clone(), x, good)
    f(cache.clone(), x, good)
    bad = torch.tensor([[0, 9]] * 3)
    c1, c2 = cache.clone(), cache.clone()
    with pytest.raises(IndexError):
        g(c2, x, bad)
    with pytest.raises(IndexError):
        f(c1, x, bad)
    assert_same(c1, c2)


# ---- outputs that are views of arguments -------------------------------------------------------
def test_dense_view_outputs_alias_the_argument_like_eager():
    def g(x):
        return x.t(), x[1], x.view(-1), x.unsqueeze(0), x * 2
    x = make_input((4, 5))
    f = kiln.compile(g)
    f(x)
    outs, want = f(x), g(x)
    for o, e in zip(outs, want):
        assert_same(o, e, check_layout=True)
        same = lambda t: t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # noqa: E731
        assert same(o) == same(e)
    outs[0][2, 3] = 100.0            # a write through the returned view lands in the argument
    assert x[3, 2].item() == 100.0
    assert [k.name for k in kiln.kernels(f)] == ["k0_mul"]  # no copies for the views


def test_view_of_an_argument_mutated_later_sees_the_mutation():
    def g(x):
        v = x.t()
        x.add_(1)
        return v
    args = make_input((3, 4))
    f = kiln.compile(g)
    a, b = args.clone(), args.clone()
    f(a.clone())
    got, want = f(a), g(b)
    assert_same(got, want)
    assert_same(a, b)


def test_strided_views_are_copied_and_carried_views_stay_right():
    def g(x):
        v = x.t()
        if v.sum() > 0:           # a graph break: v is carried into the next segment
            return v * 2, x[:, ::2]
        return v - 1, x[:, ::2]
    f = kiln.compile(g)
    for s in (1.0, -1.0, 1.0):
        x = make_input((4, 6)).abs() * s
        assert_same(f(x), g(x), check_layout=True)


def test_view_of_a_cache_written_in_place_is_returned_as_a_view():
    def g(cache, k):
        cache[:, 2:3] = k
        return cache[1]
    cache, k = make_input((3, 5)), make_input((3, 1))
    f = kiln.compile(g)
    c1, c2 = cache.clone(), cache.clone()
    f(c1.clone(), k)
    got, want = f(c1, k), g(c2, k)
    assert_same(got, want)
    assert_same(c1, c2)
    assert got.untyped_storage().data_ptr() == c1.untyped_storage().data_ptr()


def test_in_place_ops_on_chunks_write_through_to_their_base():
    # chunk/split pieces are views: add_ on one is seen in the base (the gru_cell pattern)
    def f(x, y):
        g = x * 2
        a, b, c = g.chunk(3, 1)
        a.add_(y).sigmoid_()
        c.mul_(a)  # reads another chunk of the tensor it writes: disjoint columns
        return g, b * 1
    check(f, (make_input((4, 9)), make_input((4, 3))))
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()


def test_overlapping_negative_slices_are_not_taken_for_disjoint():
    # x[:, -7:-5] is columns 0..1 of a 7-column tensor: it overlaps x[:, 0:3]
    def f(x):
        g = x * 2
        g[:, -7:-5].mul_(g[:, 0:2])
        return g
    x = make_input((3, 7))
    out = kiln.compile(f)(x)
    assert_same(out, f(x))
    assert_same(kiln.compile(f)(x), f(x))


@pytest.mark.parametrize("cell", [torch.nn.GRUCell, torch.nn.LSTMCell])
def test_rnn_cells_compile(cell):
    m = cell(5, 7).eval()
    x, h = make_input((3, 5)), make_input((3, 7))
    state = h if cell is torch.nn.GRUCell else (h, make_input((3, 7)))
    f = kiln.compile(m)
    with torch.no_grad():
        for _ in range(2):
            assert_same(f(x, state), m(x, state))
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()


def test_in_place_op_on_a_full_slice_alias_writes_through():
    # GhostNet's bottleneck: cat(...)[:, :C] of a C-wide cat is an alias of it; += on it
    def f(x):
        y = torch.cat([x[:, :2] * 2, x[:, :2] * 3], 1)
        z = y[:, :4]
        z += x
        w = z.detach()
        w.mul_(2)
        return y, z, w
    check(f, (make_input((2, 4, 5, 5)),))
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()


def _gen(s):
    return torch.Generator().manual_seed(s)


def test_index_copy_into_an_argument_is_written_in_place():
    # HF StaticCache: cache.index_copy_(2, cache_position, k) on a cache read by nothing else
    def f(cache, pos, k):
        cache.index_copy_(2, pos, k * 2)
        return cache.amax(2)
    f_k = check_mutating(f, lambda s: (make_input((2, 3, 16, 4), generator=_gen(s)), torch.tensor([3, 0, 7, 15, 9]),
                                          make_input((2, 3, 5, 4), generator=_gen(s + 9))))
    assert not kiln.counters()["fallback_op_counts"] and kiln.counters()["eager_calls"] == 0, kiln.counters()
    assert len(kiln.kernels(f_k)) == 3, [k.name for k in kiln.kernels(f_k)]  # check, scatter, amax


def test_index_copy_of_an_intermediate():
    def g(base, pos, k):
        y = base * 2
        z = y.index_copy(1, pos, k + 1)
        return z * 3, y, torch.index_copy(base, 0, pos[1:], k[:1, :1].expand(1, 6, 3))
    check_mutating(g, lambda s: (make_input((4, 6, 3), generator=_gen(s)), torch.tensor([5, 1]),
                                    make_input((4, 2, 3), generator=_gen(s + 3))))
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()


def test_index_copy_out_of_range_raises_and_leaves_the_argument_alone():
    def f(cache, pos, k):
        cache.index_copy_(2, pos, k)
        return cache.sum()
    f_k = kiln.compile(f)
    cache, k = make_input((2, 3, 16, 4)), make_input((2, 3, 5, 4))
    f_k(cache.clone(), torch.tensor([3, 0, 7, 15, 9]), k)
    for bad in ([3, 0, 7, 16, 9], [3, 0, -1, 2, 9]):
        c = cache.clone()
        with pytest.raises(IndexError):
            f(cache.clone(), torch.tensor(bad), k)
        with pytest.raises(IndexError):
            f_k(c, torch.tensor(bad), k)
