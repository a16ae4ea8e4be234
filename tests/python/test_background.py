"""Background compiles (Note [Background compiles] in python/kiln/_background.py): capture on the
calling thread, passes and code generation on kiln's compile thread, calls eager until the
program is swapped in, every result eager's."""

import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import _C, _background
from kiln.testing import assert_same, make_input


@pytest.fixture
def held_compile_thread():
    """Holds kiln's compile thread busy until the test releases it, so that the calls after a
    capture deterministically find their program still compiling."""
    gate = threading.Event()
    _background.submit(gate.wait)
    try:
        yield gate
    finally:
        gate.set()
        kiln.wait()


def mlp(x, w1, w2):
    return F.gelu(x @ w1).softmax(-1) @ w2 + 1


def mlp_inputs(rows=16):
    return make_input((rows, 32)), make_input((32, 48)), make_input((48, 8))


def test_calls_run_eagerly_until_the_program_is_swapped_in(held_compile_thread):
    f = kiln.compile(mlp, background=True)
    args = mlp_inputs()
    for _ in range(3):
        assert_same(f(*args), mlp(*args))
    c = kiln.counters()
    assert c["captures"] == 1 and c["eager_calls_while_compiling"] == 2 and c["cache_hits"] == 0, c
    assert c["eager_calls"] == 0, c  # waiting for a compile is not a fallback
    held_compile_thread.set()
    assert kiln.wait(timeout=300)
    for _ in range(2):
        assert_same(f(*args), mlp(*args))
    c = kiln.counters()
    assert c["cache_hits"] == 2 and c["captures"] == 1 and c["eager_calls_while_compiling"] == 2, c
    assert len(kiln.kernels(f)) > 0


def test_each_new_size_compiles_in_the_background(held_compile_thread):
    f = kiln.compile(mlp, background=True)
    sizes = [4, 4, 9, 9, 4, 9]
    inputs = {n: mlp_inputs(n) for n in set(sizes)}
    for n in sizes:
        assert_same(f(*inputs[n]), mlp(*inputs[n]))
    c = kiln.counters()
    assert c["captures"] == 2 and c["eager_calls_while_compiling"] == 4, c
    held_compile_thread.set()
    kiln.wait()
    for n in sizes:
        assert_same(f(*inputs[n]), mlp(*inputs[n]))
    c = kiln.counters()
    assert c["cache_hits"] == len(sizes) and c["captures"] == 2, c


def test_knob_turns_it_on():
    with kiln.config.patch(background=1):
        f = kiln.compile(mlp)
    assert f._background
    assert not kiln.compile(mlp)._background
    with kiln.config.patch(background=1):
        assert not kiln.compile(mlp, background=False)._background


def test_a_failed_compile_becomes_an_eager_entry_with_its_warning():
    f = kiln.compile(mlp, background=True)
    args = mlp_inputs()
    with kiln.config.patch(inject_failure="llvm"):  # setting a knob waits for compiles: set it first
        gate = threading.Event()
        _background.submit(gate.wait)
        f(*args)
        gate.set()
        kiln.wait()
    with pytest.warns(UserWarning, match="compiling mlp failed"):
        assert_same(f(*args), mlp(*args))
    assert_same(f(*args), mlp(*args))
    c = kiln.counters()
    assert c["eager_calls"] == 2 and any("internal error" in r for r in c["reasons"]), c


def test_an_unsupported_program_runs_eagerly_with_its_reason():
    g = lambda x: (x.to(torch.complex64) * 3).real + 1  # noqa: E731
    f = kiln.compile(g, background=True)
    x = make_input((4, 5))
    f(x)
    kiln.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known limitation is not a failure warning
        assert_same(f(x), g(x))
    c = kiln.counters()
    assert c["eager_calls"] == 1 and any("complex64" in r for r in c["reasons"]), c


def test_training_step_compiles_in_the_background(held_compile_thread):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    f = kiln.compile(model, background=True)
    x = torch.randn(5, 12)

    def grads(m):
        m.zero_grad()
        m(x).pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    want = grads(model)
    for _ in range(2):
        for g, w in zip(grads(f), want):
            assert_same(g, w)
    assert kiln.counters()["compiled_backward_calls"] == 0
    held_compile_thread.set()
    kiln.wait()
    for _ in range(2):
        for g, w in zip(grads(f), want):
            assert_same(g, w)
    c = kiln.counters()
    assert c["compiled_backward_calls"] == 2 and c["eager_calls_while_compiling"] == 1, c


def test_many_threads_call_while_it_compiles():
    f = kiln.compile(mlp, background=True)
    inputs = [mlp_inputs(n) for n in (3, 8, 8, 17)]
    want = [mlp(*a) for a in inputs]
    errors = []

    def worker(i):
        try:
            for k in range(60):
                j = (i + k) % len(inputs)
                assert_same(f(*inputs[j]), want[j])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    kiln.wait()
    for a, w in zip(inputs, want):
        assert_same(f(*a), w)
    assert kiln.counters()["cache_hits"] > 0


def test_compiles_release_the_gil():
    """While the compile thread runs passes and LLVM, the calling thread keeps running Python."""
    def big(x):
        for i in range(40):
            x = torch.sin(x * (i + 1)) + x.sum(-1, keepdim=True) / (i + 2)
        return x

    from kiln._trace import trace
    tracer = trace(big, (make_input((8, 33)),), {}, [make_input((8, 33))], [])[1]
    tracer.builder.set_outputs(tracer.segments[0].needed)
    with kiln.config.patch(cache=0):
        started, done = threading.Event(), threading.Event()
        spins = 0

        def compile_it():
            started.set()
            _C.compile_graph(tracer.builder, "")
            done.set()

        # A long switch interval: a thread holding the GIL keeps it for the whole compile, so
        # the loop below only spins while the compile has let the GIL go.
        old = sys.getswitchinterval()
        sys.setswitchinterval(0.5)
        try:
            t = threading.Thread(target=compile_it)
            t.start()
            started.wait()
            while not done.is_set():
                spins += 1
            t.join()
        finally:
            sys.setswitchinterval(old)
    assert spins > 1000, spins
