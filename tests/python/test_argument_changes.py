"""Changes a compiled function makes to the containers among its arguments are replayed on every
compiled call, or the call runs eagerly with the reason (Note [Argument containers] in
python/kiln/_argument_changes.py). Each test runs the function eagerly and compiled on two equal
states, call after call, and compares results and states after every call."""

import dataclasses
from collections import namedtuple

import pytest
import torch

import kiln

Pair = namedtuple("Pair", "a b")


@dataclasses.dataclass
class State:
    h: torch.Tensor
    n: int = 0


def _same(a, b, path="state"):
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=path, equal_nan=True)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), (path, list(a), list(b))
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif dataclasses.is_dataclass(a):
        assert list(vars(a)) == list(vars(b)), path
        for k in vars(a):
            _same(getattr(a, k), getattr(b, k), f"{path}.{k}")
    else:
        assert a == b, (path, a, b)


def _run_both(fn, make_state, calls=6, shape=(5,)):
    compiled = kiln.compile(fn)
    eager_state, kiln_state = make_state(), make_state()
    for _ in range(calls):
        x = torch.randn(*shape)
        _same(fn(x, eager_state), compiled(x, kiln_state), "result")
        _same(eager_state, kiln_state)
    return kiln.counters()


def _window(x, w):
    w.append(x * 2)
    w.pop(0)
    return torch.cat(w).sum()


def _replace(x, d):
    d["h"] = torch.tanh(d["h"] * 0.5 + x)
    return d["h"] + 1


def _dataclass_rebind(x, s):
    s.h = s.h + x
    s.last = x.sum()  # an attribute the dataclass did not have
    return s.h


def _swap(x, d):
    d["a"], d["b"] = d["b"], d["a"]
    return x + 1


def _input_kept(x, lst):
    lst[0] = x  # the argument tensor itself: the next call stores its own x there
    lst[1] = 3
    return x * 2


def _new_containers(x, d):
    d["pair"] = Pair(x, [x * 3, "tag"])
    d["t"] = (d["t"][1], d["t"][0])
    return x.sum()


@pytest.mark.parametrize("fn,make_state", [
    (_window, lambda: [torch.zeros(5), torch.ones(5)]),                     # KV window: append + pop
    (_replace, lambda: {"h": torch.zeros(5)}),                              # item replaced
    (_dataclass_rebind, lambda: State(torch.zeros(5))),                     # attribute rebound
    (_swap, lambda: {"a": [torch.zeros(1)], "b": [torch.ones(1)]}),         # containers moved
    (_input_kept, lambda: [torch.zeros(5), 0]),                             # argument tensor stored
    (_new_containers, lambda: {"pair": None, "t": (torch.ones(2), torch.zeros(2))}),
], ids=["window", "replace", "dataclass", "swap", "argument", "new_containers"])
def test_changes_replayed_on_cache_hits(fn, make_state):
    counts = _run_both(fn, make_state)
    # The second call's structure may differ from the first's (a key added, an attribute set):
    # at most two captures, then every call hits the cache and replays.
    assert counts["captures"] <= 2 and counts["cache_hits"] >= 4, counts
    assert counts["eager_calls"] == 0 and not counts["reasons"], counts


def test_kv_window_keeps_identity_of_moved_tensors():
    @kiln.compile
    def step(x, *, cache):
        cache.append(x)
        cache.pop(0)
        return x.sum()

    cache = [torch.zeros(3), torch.zeros(3)]
    for _ in range(4):
        x, prev = torch.randn(3), cache[1]
        step(x, cache=cache)
        assert cache[0] is prev and cache[1] is x  # eager moves the same tensors
    assert kiln.counters()["cache_hits"] == 3


def test_growing_list_recaptures_never_stale():
    # Each call changes the list's length, so the next call misses the cache: correct, and a
    # new variant per length (symbolic lengths are the dynamic-shapes work).
    def grow(x, c):
        c["k"].append(x + 1)
        return torch.cat(c["k"]).sum()

    counts = _run_both(grow, lambda: {"k": []}, calls=5)
    assert counts["eager_calls"] == 0 and counts["captures"] == 5


def test_counter_in_argument_dict():
    def count(x, d):
        d["step"] += 1
        return x * d["step"]

    counts = _run_both(count, lambda: {"step": 0}, calls=4)
    assert counts["eager_calls"] == 0  # each value is guarded: a capture per value, all correct


def test_unreplayable_object_runs_eagerly_with_reason():
    class Opaque:
        pass

    def put(x, d):
        d["o"] = Opaque()
        d["y"] = x + 1
        return x

    compiled = kiln.compile(put)
    d = {}
    for _ in range(3):
        x = torch.randn(2)
        compiled(x, d)
        assert torch.equal(d["y"], x + 1) and isinstance(d["o"], Opaque)
    reasons = kiln.counters()["reasons"]
    assert any("puts an object of type Opaque into its argument arg1['o']" in r for r in reasons), reasons


def test_training_call_replays_and_gradients_flow_through_stored_tensors():
    def f(x, w, d):
        h = torch.tanh(x @ w)
        d["h"] = h
        d["hist"].append(h.sum())
        d["hist"].pop(0)
        return (h * 2).sum()

    compiled = kiln.compile(f)
    w_eager = torch.randn(4, 3, requires_grad=True)
    w_kiln = w_eager.detach().clone().requires_grad_()
    d_eager, d_kiln = {"hist": [torch.zeros(())]}, {"hist": [torch.zeros(())]}
    for _ in range(4):
        x = torch.randn(5, 4)
        for fn, w, d in ((f, w_eager, d_eager), (compiled, w_kiln, d_kiln)):
            # the loss reaches w also through the tensors the call stored in d
            (fn(x, w, d) + d["h"].pow(2).sum() + d["hist"][0] * 3).backward()
        torch.testing.assert_close(w_kiln.grad, w_eager.grad)
        _same(d_eager, d_kiln)
    counts = kiln.counters()
    assert counts["compiled_backward_calls"] >= 2 and counts["eager_calls"] == 0 and not counts["reasons"], counts


def test_graph_break_paths_replay_their_own_changes():
    def f(x, d):
        y = x * 2
        if y.sum() > 0:  # a value read into Python: a graph break, two paths
            d["pos"].append(y + 1)
            d["pos"].pop(0)
        else:
            d["neg"] = y - 1
        d["y"] = y
        return y

    compiled = kiln.compile(f)
    d_eager = {"pos": [torch.zeros(4)], "neg": torch.zeros(4)}
    d_kiln = {"pos": [torch.zeros(4)], "neg": torch.zeros(4)}
    for i in range(8):
        x = torch.randn(4) + (2.0 if i % 2 else -2.0)
        out = compiled(x, d_kiln)
        _same(f(x, d_eager), out, "result")
        _same(d_eager, d_kiln)
        assert d_kiln["y"] is out  # the stored tensor is the returned one, as in eager
    counts = kiln.counters()
    assert counts["cache_hits"] >= 4 and counts["eager_calls"] == 0 and not counts["reasons"], counts


def test_training_step_with_graph_breaks_and_argument_changes_runs_eagerly():
    def f(x, d):
        y = x * 2
        if y.sum() > 0:
            y = y + 1
        d["y"] = y
        return y.sum()

    compiled = kiln.compile(f)
    d = {}
    for _ in range(3):
        x = torch.randn(4, requires_grad=True)
        compiled(x, d).backward()
        assert d["y"].requires_grad and torch.equal(x.grad, torch.full((4,), 2.0))
    assert any("training step with graph breaks" in r for r in kiln.counters()["reasons"]), kiln.counters()


def test_unchanged_containers_cost_nothing():
    # A function that only reads its containers gets no replay (and stays on the plain path).
    compiled = kiln.compile(lambda x, d: x + d["b"])
    d = {"b": torch.randn(4)}
    for _ in range(3):
        compiled(torch.randn(4), d)
    entry = next(iter(compiled._entries.values()))[0]
    assert entry.replay is None and kiln.counters()["cache_hits"] == 2


def test_explain_names_the_replayed_containers():
    text = str(kiln.explain(_window, torch.randn(3), [torch.zeros(3), torch.ones(3)]))
    assert "replays the changes to its arguments arg1" in text, text


def test_check_mode_compares_calls_that_change_their_containers():
    # KILN_CHECK runs eager on copies of the containers too: neither run sees the other's changes.
    with kiln.config.patch(check=True):
        compiled = kiln.compile(_dataclass_rebind)
        state = State(torch.zeros(5))
        for _ in range(3):
            x = torch.randn(5)
            before = state.h.clone()
            torch.testing.assert_close(compiled(x, state), before + x)
            torch.testing.assert_close(state.h, before + x)
