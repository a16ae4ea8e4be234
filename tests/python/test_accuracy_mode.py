"""KILN_CHECK=1 compares every compiled call with eager; KILN_INJECT_BUG plants a wrong lowering
to prove the checker (and anything else relying on it) catches divergence."""

import pytest
import torch

import kiln


def f(x):
    return torch.relu(x) * 2 + 1


def test_check_mode_passes_on_correct_code():
    x = torch.randn(33)
    with kiln.config.patch(check=1):
        g = kiln.compile(f)
        for _ in range(3):
            torch.testing.assert_close(g(x), f(x))
    assert kiln.counters()["cache_hits"] == 2


def test_check_mode_catches_a_planted_bug_and_names_the_kernel():
    x = torch.randn(33)
    with kiln.config.patch(check=1, inject_bug="relu"):
        g = kiln.compile(f)
        g(x)  # the capturing call runs eagerly
        with pytest.raises(kiln.AccuracyError) as err:
            g(x)
    msg = str(err.value)
    assert "diverges from eager" in msg
    assert "first diverging kernel: k0_maximum" in msg
    assert "def f(x):" in msg and "kiln.compile(f)" in msg  # a standalone reproducer


def test_planted_bug_is_wrong_without_check_mode():
    # Guards against a checker that cannot fail: the injected bug really changes results.
    x = -torch.rand(8) - 0.5
    with kiln.config.patch(inject_bug="relu"):
        g = kiln.compile(f)
        g(x)
        assert not torch.allclose(g(x), f(x))


def test_reproducer_runs():
    from kiln._accuracy import reproducer
    src = reproducer(f, (torch.randn(3, 4).t(),), {})
    exec(compile(src, "<repro>", "exec"), {"__name__": "repro"})
