"""torch.compile(..., backend="kiln"): Dynamo's graphs compiled by kiln, for inference and for
training (forward and backward), including Dynamo's own graph breaks."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln
from fresh_python import run_python


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    kiln.reset()
    yield
    torch._dynamo.reset()
    kiln.reset()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 3))


def test_inference_runs_kiln_programs():
    m = model()
    mc = torch.compile(m, backend="kiln")
    x = torch.randn(5, 12)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(mc(x), m(x))
    c = kiln.counters()
    assert c["captures"] == 1 and c["cache_hits"] == 2 and c["eager_calls"] == 0, c["reasons"]


def test_training_compiles_forward_and_backward():
    m = model()
    me, mk = copy.deepcopy(m), copy.deepcopy(m)
    mc = torch.compile(mk, backend="kiln")
    oe, ok = torch.optim.AdamW(me.parameters(), lr=1e-2), torch.optim.AdamW(mk.parameters(), lr=1e-2)
    for i in range(3):
        x, y = torch.randn(6, 12), torch.randint(0, 3, (6,))
        F.cross_entropy(me(x), y).backward()
        F.cross_entropy(mc(x), y).backward()
        for a, b in zip(mk.parameters(), me.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        oe.step()
        ok.step()
        oe.zero_grad()
        ok.zero_grad()
    for a, b in zip(mk.parameters(), me.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c = kiln.counters()
    assert c["eager_calls"] == 0, c["reasons"]
    assert c["compiled_backward_calls"] == 2


def test_gradients_flow_across_dynamo_graph_breaks():
    w1 = torch.randn(8, 8, requires_grad=True)
    w2 = torch.randn(8, 8, requires_grad=True)

    def f(x):
        h = torch.relu(x @ w1)
        torch._dynamo.graph_break()
        return torch.sigmoid(h @ w2).sum()

    fc = torch.compile(f, backend="kiln")
    for _ in range(3):
        x = torch.randn(4, 8)
        ge = torch.autograd.grad(f(x), [w1, w2])
        gk = torch.autograd.grad(fc(x), [w1, w2])
        for a, b in zip(gk, ge):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert kiln.counters()["compiled_backward_calls"] >= 4  # two graphs, two later calls each


@pytest.mark.parametrize("import_kiln", [False, True])
def test_backend_found_with_or_without_import(import_kiln):
    out = run_python(
        "import torch\n"
        + ("import kiln\n" if import_kiln else "")
        + "f = torch.compile(lambda x: torch.relu(x) * 2, backend='kiln')\n"
        "x = torch.randn(5)\n"
        "assert torch.equal(f(x), torch.relu(x) * 2) and torch.equal(f(x), torch.relu(x) * 2)\n"
        "import kiln\n"
        "print(kiln.counters()['captures'], kiln.counters()['cache_hits'])\n").stdout
    assert out.split() == ["1", "1"], out
