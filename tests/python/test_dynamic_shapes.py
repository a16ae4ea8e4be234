"""Dynamic sizes (Note [Dynamic sizes] in runtime/dynamic_program.cpp): one
program serves every size of a changing dim after a second capture -- a batch, a row count, an
inner length -- wherever the lowering at that size matches the program's kernel template;
anything else stays specialised, and every call matches eager."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import _C

pytestmark = pytest.mark.skipif(not hasattr(_C, "DynamicEntry"), reason="built without the CPU backend")

# Sizes past the two captures: 2 (the smallest symbolic size), odd sizes that leave vector
# tails, a large one, sizes 0 and 1 (specialised), and repeats.
SIZES = [8, 12, 2, 3, 17, 64, 5, 1, 0, 129, 3, 8]


def _entries(f):
    return [e for es in f._entries.values() for e in es]


def _workload(name):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import dynamic_workloads
    return getattr(dynamic_workloads, name)


def _dynamic_entries(f):
    return [e for e in _entries(f) if e.dynamic is not None]


def _run_sizes(fn, make_args, sizes=SIZES, **compile_kw):
    f = kiln.compile(fn, **compile_kw)
    for n in sizes:
        args = make_args(n)
        expected = fn(*args)
        got = f(*args)
        # rtol: products sum in another order than eager's
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
        assert got.shape == expected.shape and got.stride() == expected.stride()
    return f


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def test_rms_norm_over_rows_compiles_twice_and_never_runs_eagerly():
    kiln.reset()
    w = torch.randn(96)
    f = _run_sizes(rms_norm, lambda n: (torch.randn(n, 96), w))
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1
    assert c["eager_calls"] == 0
    # 8 and 12 make the dynamic program; 1 and 0 get captures of their own (broadcasting and
    # squeezes depend on them). At 1 the row loop is gone, so that lowering needs its own code.
    assert c["captures"] == 4
    assert len(_dynamic_entries(f)) == 1
    assert len(_entries(f)) == 3
    assert f._compiles == 4  # the static program at 8, the dynamic one, the ones at 1 and 0


def test_mlp_over_batch_sizes():
    kiln.reset()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32),
                              torch.nn.LayerNorm(32)).eval()
    with torch.no_grad():
        f = _run_sizes(mlp, lambda n: (torch.randn(n, 64),))
        c = kiln.counters()
        assert c["dynamic_compiles"] == 1 and c["eager_calls"] == 0
        # What the program specialised on that size computes, but for the products' order of
        # summation (the dynamic program may run them tile by tile: Note [Epilogues in cache]).
        for n in (3, 37):
            x = torch.randn(n, 64)
            torch.testing.assert_close(f(x), kiln.compile(mlp, dynamic=False)(x))


def test_feed_forward_over_token_counts_3d():
    kiln.reset()
    w1, w2, w3 = torch.randn(48, 32), torch.randn(32, 48), torch.randn(48, 32)

    def ffn(x):
        return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    _run_sizes(ffn, lambda n: (torch.randn(n, 5, 32),))
    assert kiln.counters()["dynamic_compiles"] == 1


def test_softmax_over_rows_with_edge_values():
    kiln.reset()

    def make(n):
        x = torch.randn(n, 33) * 100
        if n > 2:
            x[1, 3] = float("inf")
            x[2, :] = float("-inf")
            x[0, 5] = float("nan")
        return (x,)

    _run_sizes(lambda x: F.softmax(x, -1), make)
    assert kiln.counters()["dynamic_compiles"] == 1


def test_two_arguments_share_the_symbol():
    kiln.reset()
    f = _run_sizes(lambda x, y: torch.relu(x) * y + 1, lambda n: (torch.randn(n, 7), torch.randn(n, 7)))
    assert kiln.counters()["dynamic_compiles"] == 1
    # Sizes that disagree fail the relation guard and raise as eager does.
    with pytest.raises(RuntimeError):
        f(torch.randn(5, 7), torch.randn(6, 7))
    guards = "\n".join(_dynamic_entries(f)[0].guards.describe())
    assert "sizes (s, 7)" in guards and "2 <= s" in guards


def test_broadcast_and_transposed_arguments():
    kiln.reset()
    b = torch.randn(1, 9)
    _run_sizes(lambda x: x.t() * 2 + b, lambda n: (torch.randn(9, n).t().t(),))  # contiguous (9, n): s inner
    _run_sizes(lambda x: torch.tanh(x) + b, lambda n: (torch.randn(9, n).t(),))  # (n, 9) with strides (1, n)
    # s is an inner dim in the first and a stride in the second: both are dynamic.
    assert kiln.counters()["dynamic_compiles"] == 2


def test_concat_along_features_is_dynamic_and_along_rows_is_right():
    kiln.reset()
    _run_sizes(lambda x: torch.cat([x, x * 2], -1).sigmoid(), lambda n: (torch.randn(n, 16),))
    assert kiln.counters()["dynamic_compiles"] == 1
    # Along the changing dim the boundary between the pieces is a kernel parameter.
    kiln.reset()
    _run_sizes(lambda x: torch.cat([x, x * 2], 0).sigmoid(), lambda n: (torch.randn(n, 16),))
    assert kiln.counters()["dynamic_compiles"] == 1


def test_slice_clamped_at_the_captured_sizes_is_right_below_them():
    """x[:5] made 5 rows at both captures (8 and 12); at 3 rows eager takes 3. The template's
    slice is out of bounds there, so that size specialises instead of reading past the rows."""
    kiln.reset()
    f = _run_sizes(lambda x: x[:5] * 2 + 1, lambda n: (torch.randn(n, 6),), sizes=[8, 12, 3, 2, 20, 4])
    refused = _dynamic_entries(f)[0].native.refused
    assert set(refused) == {2, 3, 4}
    assert "slice" in refused[3]


@pytest.mark.parametrize("case", ["chunk", "clamped slice", "roll", "arange step"])
def test_sizes_the_tracer_computes_by_other_rules_are_right(case):
    """Sizes a rule that is not affine computes from the changing size -- a chunk's pieces
    (2 + 1 rows of 3, 2 + 2 of 4), a slice bound clamped to it (x[:3] is all of 2 and 3 rows), a
    shift taken modulo it, arange's ceil -- can look affine at two captures; they are noted at
    capture and keep that size specialised, so every size gets eager's shapes and values."""
    kiln.reset()
    fns = {
        "chunk": (lambda x: tuple(c * 2 for c in x.chunk(2)), lambda n: (torch.randn(n, 3),)),
        "clamped slice": (lambda x: torch.logical_xor(x[:3], x), lambda n: (torch.randn(n, 2),)),
        "roll": (lambda x: x.roll(5, 0) + 1, lambda n: (torch.randn(n, 2),)),
        "arange step": (lambda x, n: x + torch.arange(0, n, 2).float()[:, None], None),
    }
    fn, make = fns[case]
    sizes = [4, 5, 6, 7, 9, 2, 3] if case == "chunk" else [2, 3, 4, 5, 6, 7, 9]
    f = kiln.compile(fn)
    for n in sizes:
        args = make(n) if make else (torch.randn((n + 1) // 2, 3), n)
        try:
            expected = fn(*args)
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=str(e)[:20]):
                f(*args)
            continue
        torch.testing.assert_close(f(*args), expected)


def test_slices_from_the_end_are_right():
    # x[-3:] starts at s - 3: an offset that is a kernel parameter.
    kiln.reset()
    _run_sizes(lambda x: x[-3:] + x[:3], lambda n: (torch.randn(n, 4),), sizes=[8, 12, 3, 5, 40])
    assert kiln.counters()["dynamic_compiles"] == 1
    # Slicing features keeps every row: dynamic.
    _run_sizes(lambda x: x[:, -3:] + x[:, :3], lambda n: (torch.randn(n, 7),))
    assert kiln.counters()["dynamic_compiles"] == 2


def test_reduction_over_the_changing_dim_is_dynamic():
    # The reduction's length and the mean's 1/s are kernel parameters.
    kiln.reset()
    f = _run_sizes(lambda x: x.sum(0) + x.mean(0), lambda n: (torch.randn(n, 8),), sizes=[8, 12, 5, 7, 2, 300])
    assert kiln.counters()["dynamic_compiles"] == 1
    assert len(_entries(f)) == 1


def test_sizes_python_reads_into_views_follow_the_symbol():
    kiln.reset()

    def f(x):
        b, t, c = x.size()
        return x.view(b, t, 2, c // 2).transpose(1, 2).reshape(b * 2, -1).softmax(-1)

    _run_sizes(f, lambda n: (torch.randn(n, 3, 8),), sizes=[8, 12, 2, 3, 17, 1, 5])  # 0: eager's reshape raises
    assert kiln.counters()["dynamic_compiles"] == 1


def test_gpt_block_over_batch_sizes():
    """`b, t, c = x.size()` and views by those sizes: the batch follows the symbol."""
    kiln.reset()
    torch.manual_seed(0)
    m = _workload("_GptBlock")().eval()
    with torch.no_grad():
        _run_sizes(m, lambda n: (torch.randn(n, 6, 128),), sizes=[2, 3, 5, 1, 9])
    assert kiln.counters()["dynamic_compiles"] == 1


def test_gpt_block_over_sequence_lengths():
    """Attention over a changing sequence length: the scores' row length and stride, the causal
    mask's bound and the softmax's length are parameters of one program."""
    kiln.reset()
    torch.manual_seed(0)
    m = _workload("_GptBlock")().eval()
    with torch.no_grad():
        _run_sizes(m, lambda n: (torch.randn(2, n, 128),), sizes=[8, 12, 2, 3, 5, 17, 33, 9, 12])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["captures"] == 2 and c["eager_calls"] == 0


def test_masked_softmax_over_lengths():
    kiln.reset()

    def masked_softmax(scores, mask):
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)

    def args(n):
        scores = torch.randn(6, n)
        if n:
            scores[0, 0] = float("nan")
            scores[1, :] = float("-inf")
        return scores, torch.arange(n)[None, :] < torch.randint(0, n + 2, (6, 1))

    _run_sizes(masked_softmax, args, sizes=[8, 12, 2, 3, 16, 17, 129, 5, 1, 0])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["eager_calls"] == 0
    assert c["captures"] == 4  # 8, 12, and the specialised 1 and 0


def test_decode_steps_with_start_pos_write_the_cache_in_place():
    """LLaMA's decode step (benchmarks/dynamic_workloads.py): `start_pos` an int, the KV cache a
    preallocated tensor the step writes at start_pos and reads up to it. One program serves
    every position from the third on; each step's output, which reads every cache row written
    so far, is eager's."""
    step, calls, _, reset = _workload("_llama_decode_start_pos")()
    reset()
    expected = [step(*args) for args in calls]
    reset()
    kiln.reset()
    f = kiln.compile(step)
    for args, e in zip(calls, expected):
        torch.testing.assert_close(f(*args), e)
    counts = kiln.counters()
    assert counts["dynamic_compiles"] == 1 and counts["eager_calls"] == 0
    assert counts["captures"] == 4  # positions 0 and 1 (specialised), 2 and 3 (the dynamic program)


def test_a_size_whose_lowering_differs_gets_its_own_program():
    """A float32 sum of 65536 terms or more accumulates in float64: its kernel differs from the
    template's, so that size does not match and is specialised, right as every other size."""
    kiln.reset()
    f = _run_sizes(lambda x: x.sum(-1) * 2, lambda n: (torch.randn(2, n),), sizes=[8, 12, 70000, 9, 70000])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["captures"] == 3 and c["eager_calls"] == 0
    refused = _dynamic_entries(f)[0].native.refused
    assert set(refused) == {70000} and "reduction" in refused[70000]
    assert "p0" in str(kiln._explain.Explanation(f.entries()))


@pytest.mark.parametrize("decide", ["len", "float", "returned", "intermediate"])
def test_python_deciding_on_a_size_stays_specialised(decide):
    """A size Python converts, returns, or compares where kiln cannot tell its form (an
    intermediate's) may steer it: such captures never become a dynamic program, so every size
    gets what eager computes."""
    kiln.reset()

    def f(x):
        n = x.shape[0]
        if decide == "len":
            return x * len(x)
        if decide == "float":
            return x / float(n)
        if decide == "intermediate":
            return x * 2 if (x + 1).shape[0] > 10 else x - 1
        return x + 1, n

    f_k = kiln.compile(f)
    for n in [4, 6, 11, 3, 12]:
        x = torch.randn(n, 4)
        torch.testing.assert_close(f_k(x), f(x))
    assert kiln.counters()["dynamic_compiles"] == 0


@pytest.mark.parametrize("decide", ["branch", "min", "shifted"])
def test_size_comparisons_become_the_symbols_range(decide):
    """Python compares an argument's size with a constant (if T > 10, min(T, 10), T - 3 >= 7):
    the dynamic program's guards keep s on the side of 10 the captures took; a size on the
    other side captures again (and may make a dynamic program of its own)."""
    kiln.reset()

    def f(x):
        n = x.shape[0]
        if decide == "branch":
            return x * 2 if n > 10 else x - 1
        if decide == "min":
            return x[:min(n, 10)] * 3
        return x.sum(-1, keepdim=True) * 2 if n - 3 >= 7 else x * 5

    f_k = kiln.compile(f)
    for n in [4, 6, 3, 2, 9, 10, 11, 12, 30, 10, 5, 1]:
        x = torch.randn(n, 4)
        torch.testing.assert_close(f_k(x), f(x))
    assert kiln.counters()["dynamic_compiles"] == 2  # one for n <= 10, one for n >= 11
    described = "\n".join(g for e in _dynamic_entries(f_k) for g in e.guards.describe())
    assert "2 <= s <= 10" in described or "2 <= s <= 9" in described
    assert "11 <= s <= " in described or "10 <= s <= " in described


def test_dynamic_false_specialises():
    kiln.reset()
    _run_sizes(torch.sin, lambda n: (torch.randn(n, 4),), sizes=[4, 6, 7], dynamic=False)
    c = kiln.counters()
    assert c["dynamic_compiles"] == 0 and c["captures"] == 3


def test_a_changed_plain_argument_is_not_a_size():
    """The size and an int argument change together by the same amount: the int must stay a
    guarded constant, not be mistaken for s + c."""
    kiln.reset()
    f = kiln.compile(lambda x, k: x[:, :k] * 3)
    for n, k in [(8, 3), (9, 4), (10, 3), (11, 4)]:
        x = torch.randn(n, 6)
        torch.testing.assert_close(f(x, k), x[:, :k] * 3)


def test_background_compiles_and_the_fast_path():
    kiln.reset()
    f = kiln.compile(lambda x: torch.exp(x) - x, background=True)
    for n in [8, 12, 13, 14]:  # 12 pairs with 8 while 8 still compiles
        x = torch.randn(n, 16)
        torch.testing.assert_close(f(x), torch.exp(x) - x)
    kiln.wait()
    _C.reset_fast_hits()
    for n in [15, 30, 8, 9]:  # the first call swaps the program in; the others take the fast path
        x = torch.randn(n, 16)
        torch.testing.assert_close(f(x), torch.exp(x) - x)
    assert _C.fast_hits() == 3
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["captures"] == 2 and c["eager_calls"] == 0


def test_explain_names_the_symbol():
    kiln.reset()
    f = _run_sizes(lambda x: x * 2, lambda n: (torch.randn(n, 3),), sizes=[4, 6])
    text = str(kiln._explain.Explanation(f.entries()))
    assert "dynamic program: s = leaf 0 size(0) (seen 4 and 6)" in text
    assert "sizes (s, 3), strides (3, 1)" in text


def test_int_arguments_follow_the_symbol():
    kiln.reset()

    def f(x, n):
        return torch.arange(n).float().sin()[:, None] + x

    _run_sizes(f, lambda n: (torch.randn(n, 3), n))
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["eager_calls"] == 0
    # An int alone (no tensor size changes) can be the symbol too.
    kiln.reset()
    g = _run_sizes(lambda n: torch.arange(n) * 3 + 1, lambda n: (n,), sizes=[5, 9, 2, 30, 1, 0])
    assert kiln.counters()["dynamic_compiles"] == 1
    assert "leaf 0: an int == s" in "\n".join(_dynamic_entries(g)[0].guards.describe())


def test_an_int_argument_python_decides_on_stays_specialised():
    kiln.reset()

    def f(x, n):
        return x * 2 if n > 10 else x - 1

    f_k = kiln.compile(f)
    for n in [4, 6, 11, 3, 12]:
        x = torch.randn(n, 4)
        torch.testing.assert_close(f_k(x, n), f(x, n))
    assert kiln.counters()["dynamic_compiles"] == 0


def test_torch_compile_backend_kiln_over_changing_sizes():
    """Dynamo recompiles with a size argument (s0) at the second size; kiln makes that graph one
    program for every size."""
    kiln.reset()
    w = torch.randn(96)
    f = torch.compile(lambda x: rms_norm(x, w), backend="kiln")
    for n in [8, 12, 16, 20, 33, 2, 5]:
        x = torch.randn(n, 96)
        torch.testing.assert_close(f(x), rms_norm(x, w), rtol=1e-5, atol=1e-5)
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["captures"] == 3 and c["eager_calls"] == 0


def test_pooling_over_the_changing_size_stays_specialised():
    """The pooled length floor(s / 2) is 2 at both 4 and 5 rows: two captures cannot tell its
    rule, so kiln keeps specialising (and at 12 computes 6 outputs, as eager does)."""
    kiln.reset()
    _run_sizes(lambda x: F.avg_pool1d(x, 2) * 2, lambda n: (torch.randn(1, 1, n),), sizes=[4, 5, 12, 9])
    assert kiln.counters()["dynamic_compiles"] == 0


def test_pooling_images_over_batch_sizes():
    kiln.reset()
    _run_sizes(lambda x: F.relu(F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)), lambda n: (torch.randn(n, 3, 8, 8),),
               sizes=[2, 3, 5, 1, 8])
    assert kiln.counters()["dynamic_compiles"] == 1


def test_threads_calling_one_dynamic_program_over_many_sizes():
    """Instances are made and dropped (past 32 sizes) while other threads run theirs with the
    GIL released."""
    import threading
    kiln.reset()
    w = torch.randn(512)
    f = kiln.compile(lambda x: rms_norm(x, w))
    for n in (8, 12):
        f(torch.randn(n, 512))
    errors = []

    def work(offset):
        try:
            for n in range(2, 90):
                x = torch.randn(n * 7 + offset, 512)
                torch.testing.assert_close(f(x), rms_norm(x, w))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert kiln.counters()["dynamic_compiles"] == 1


@pytest.mark.parametrize("how", ["kiln", "dynamo"])
def test_mark_static_keeps_a_dim_specialised(how):
    kiln.reset()

    def make(n):
        x = torch.randn(n, 6)
        if how == "kiln":
            kiln.mark_static(x, 0)
        else:
            import torch._dynamo as dynamo
            dynamo.mark_static(x, 0)
        return (x,)

    _run_sizes(torch.tanh, make, sizes=[4, 6, 9])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 0 and c["captures"] == 3


def _check_training_sizes(make_module, make_batch, sizes):
    """Trains a kiln-compiled module and an eager copy side by side over `sizes`: each step's
    loss and every parameter's gradient must agree."""
    torch.manual_seed(0)
    m = make_module()
    ref = make_module()
    ref.load_state_dict(m.state_dict())
    f = kiln.compile(m)
    for n in sizes:
        x, target = make_batch(n)
        loss = F.mse_loss(f(x), target)
        loss.backward()
        expected = F.mse_loss(ref(x), target)
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=f"{name} at size {n}")
            p.grad = q.grad = None
    return f


def test_training_steps_over_batch_sizes():
    """A training step whose batch changes: the joint graph of two captures becomes one dynamic
    training step (runtime/dynamic_training.h), its forward and backward each compiled once."""
    kiln.reset()
    _check_training_sizes(
        lambda: torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                                    torch.nn.Linear(32, 4)),
        lambda n: (torch.randn(n, 16), torch.randn(n, 4)), [8, 12, 3, 5, 17, 64, 2, 1, 9, 12])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["eager_calls"] == 0
    assert c["captures"] == 3  # 8, 12 (the dynamic step) and 1
    assert c["compiled_backward_calls"] == 7


def test_training_gpt_block_over_sequence_lengths():
    kiln.reset()
    _check_training_sizes(lambda: _workload("_GptBlock")(c=32, heads=2),
                          lambda n: (torch.randn(2, n, 32), torch.randn(2, n, 32)), [8, 12, 3, 5, 17, 9])
    c = kiln.counters()
    assert c["dynamic_compiles"] == 1 and c["eager_calls"] == 0 and c["captures"] == 2
