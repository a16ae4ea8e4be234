"""Note [Shape reads] (_trace.py): an op whose result's shape is data (x[mask], nonzero,
masked_select, unique, repeat_interleave by counts) splits the trace like a value read into
Python: the code before and after it compiles, the op runs eagerly between the segments, and
its result's sizes and strides key the segment after it."""

import pytest
import torch

import kiln
from kiln.testing import assert_same, make_input


def _gen(s):
    return torch.Generator().manual_seed(s)


def _calls(fn, inputs):
    """Calls the compiled fn on each input tuple, comparing with eager; returns it."""
    f = kiln.compile(fn)
    for args in inputs:
        assert_same(f(*args), fn(*args))
    return f


def test_a_masked_loss_compiles_around_the_mask():
    def loss(pred, target, mask):
        d = (pred - target) * 2
        return (d[mask] ** 2).mean() + pred.abs().sum()
    ins = [(make_input((64,), generator=_gen(s)), make_input((64,), generator=_gen(s + 1)),
            torch.rand(64, generator=_gen(s + 2)) > 0.5) for s in range(3)]
    f = _calls(loss, ins + ins)  # the second round meets counts seen before
    c = kiln.counters()
    assert c["eager_calls"] == 0 and not c["fallback_op_counts"], c
    assert c["captures"] == 3 and c["cache_hits"] == 3, c
    assert c["graph_breaks"] == 3, c
    e = kiln.explain(loss, *ins[0])
    assert e.graph_count == 2 and len(e.graph_breaks) == 1, str(e)
    assert "boolean mask" in e.graph_breaks[0][0] and "d[mask]" in e.graph_breaks[0][1], e.graph_breaks
    assert any("pow" in k.name for k in kiln.kernels(f)), [k.name for k in kiln.kernels(f)]


@pytest.mark.parametrize("case", ["nonzero", "argwhere", "where_one_arg", "masked_select", "unique",
                                  "unique_counts", "unique_consecutive", "repeat_interleave", "mask_2d_rows",
                                  "returned", "mutated_after", "read_after"])
def test_data_dependent_shapes(case):
    fn = {
        "nonzero": lambda x: (x > 0).nonzero() * 2 + 1,
        "argwhere": lambda x: torch.argwhere(x.sin() > 0.3).sum(0),
        "where_one_arg": lambda x: [t * 3 for t in torch.where(x > 0.2)],
        "masked_select": lambda x: torch.masked_select(x * 2, x > 0).exp().sum(),
        "unique": lambda x: torch.unique((x * 2).round()) + 1,
        "unique_counts": lambda x: [t * 2 for t in torch.unique((x * 2).round(), return_inverse=True,
                                                               return_counts=True)],
        "unique_consecutive": lambda x: torch.unique_consecutive(x.round()) - 1,
        "repeat_interleave": lambda x: torch.repeat_interleave(x[0], (x[1] > 0).long() + 1) * 2,
        "mask_2d_rows": lambda x: x[x[:, 0] > 0].sum(0),
        "returned": lambda x: x[x > 0],
        "mutated_after": lambda x: x[x > 0].mul_(2).add(1),
        "read_after": lambda x: x[x > 0].sum() * 2 if x[x > 0].numel() > 3 else x.sum(),
    }[case]
    ins = [(make_input((5, 7), generator=_gen(s)),) for s in range(3)]
    ins[2] = (torch.full((5, 7), -1.0),)  # an empty result
    _calls(fn, ins + ins)
    c = kiln.counters()
    assert c["eager_calls"] == 0 and c["cache_hits"] >= 3, c


def test_counts_that_keep_changing_stop_at_the_cache_limit():
    # every call meets a new count: each compiles a continuation until the variant limit,
    # then the function runs eagerly (and right), saying why
    fn = lambda a: (a[a > 0] * 2).sum()  # noqa: E731
    f = kiln.compile(fn)
    xs = []
    for k in range(12):
        x = -make_input((200,), generator=_gen(k)).abs() - 0.1
        x[torch.randperm(200, generator=_gen(k))[:k + 10]] *= -1  # k + 10 positives
        xs.append(x)
    with pytest.warns(UserWarning, match="runs eagerly from now on"):
        for x in xs:
            torch.testing.assert_close(f(x), fn(x))
    c = kiln.counters()
    assert c["eager_calls"] >= 1 and any("variants" in r for r in c["reasons"]), c


def test_a_shape_read_on_values_from_an_argument_written_in_place():
    def f(x, m):
        x.mul_(2)
        return x[m].sum(), x + 1
    ins = [(make_input((6, 4), generator=_gen(s)), torch.rand(6, 4, generator=_gen(s + 5)) > 0.3) for s in range(2)]
    g = kiln.compile(f)
    for x, m in ins + ins:
        xe, xk = x.clone(), x.clone()
        assert_same(g(xk, m), f(xe, m))
        assert_same(xk, xe, what="the argument after the call")
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()
