"""Graph breaks: values read into Python split the trace into a tree of compiled segments."""

import torch

import kiln
from kiln.testing import assert_same, make_input


def test_both_branches_compile_and_are_reused():
    def f(x):
        y = x * 2
        if y.sum() > 0:
            return y.exp()
        return y.tanh() - 1

    cf = kiln.compile(f)
    for lo in (0.1, -0.9, 0.2, -0.8, 0.3, -0.7):
        x = make_input((5, 6), low=lo, high=lo + 0.6)
        assert_same(cf(x), f(x))
    c = kiln.counters()
    assert c["captures"] == 2 and c["cache_hits"] == 4 and c["eager_calls"] == 0
    assert c["graph_breaks"] >= 2
    assert len(kiln.kernels(cf)) >= 3  # the shared prefix and one segment per branch


def test_trip_count_from_a_tensor_is_right_for_every_count():
    def f(x):
        n = int((x > 0).sum())
        for _ in range(n):
            x = x * 0.5 + 1
        return x, n

    cf = kiln.compile(f)
    with kiln.config.patch(cache_limit=16):
        for k in [0, 3, 1, 3, 0, 5, 1]:
            x = torch.cat([torch.rand(k) + 0.1, -torch.rand(6 - k) - 0.1])
            got, want = cf(x), f(x)
            assert got[1] == want[1] == k
            assert_same(got[0], want[0])
    assert kiln.counters()["cache_hits"] == 3  # 3, 0 and 1 came back


def test_a_value_never_seen_is_never_reused():
    def f(x):
        return x * x.max().item()

    cf = kiln.compile(f)
    for scale in (1.0, 2.0, 3.0):
        x = torch.full((4,), scale)
        x[0] = scale + 0.5
        assert_same(cf(x), f(x))
    assert kiln.counters()["cache_hits"] == 0


def test_tolist_and_equal_read_values():
    def f(x, y):
        a, b = x[:2].tolist()
        same = torch.equal(x, y)
        return x * a + b if same else x - a

    cf = kiln.compile(f)
    x = torch.tensor([1.0, 2.0, 3.0])
    for y in (x.clone(), x + 1, x.clone(), x + 1):
        assert_same(cf(x, y), f(x, y))
    assert kiln.counters()["cache_hits"] == 2


def test_explain_lists_breaks_with_their_line():
    def f(x):
        if x.sum() > 0:
            return x + 1
        return x - 1

    e = kiln.explain(f, torch.ones(3))
    assert e.graph_count == 2
    assert len(e.graph_breaks) == 1
    reason, where = e.graph_breaks[0]
    assert "test_graph_breaks.py" in where and "x.sum() > 0" in where


def test_break_location_in_a_folder_named_kiln(tmp_path):
    # User code under a folder named "kiln" (a clone of this repository, say) is still the
    # user's: the location once skipped every path containing "/kiln/" and reported "?".
    import importlib.util
    folder = tmp_path / "kiln"
    folder.mkdir()
    (folder / "user_code_with_break.py").write_text(
        "def branchy(x):\n"
        "    if x.sum() > 0:\n"
        "        return x * 2\n"
        "    return x - 1\n")
    spec = importlib.util.spec_from_file_location("user_code_with_break", folder / "user_code_with_break.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    f = kiln.compile(mod.branchy)
    text = kiln.explain(f, torch.ones(3))
    assert "user_code_with_break.py:2" in str(text), text
