"""Modules passed as arguments (`train_step(model, batch)`, `loss_fn(model, x)`): their
parameters, buffers and attributes are read through the module object, which the guards pin
(identity), so another module, a changed mode or a replaced parameter never reuses a program
built for the old ones."""

import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Dropout(0.0),
                               torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))


def loss_fn(model, x, y):
    return F.cross_entropy(model(x), y)


def test_training_step_with_the_model_as_an_argument_runs_compiled():
    model, ref = make_model(), make_model()
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    step = kiln.compile(loss_fn)
    for i in range(4):
        x, y = torch.randn(8, 12), torch.randint(0, 4, (8,))
        for m, o, f in ((model, opt, step), (ref, ref_opt, loss_fn)):
            o.zero_grad()
            loss = f(m, x, y)
            loss.backward()
            o.step()
            if m is model:
                got = loss
            else:
                want = loss
        assert_same(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_same(p, q, rtol=1e-5, atol=1e-6)
    c = kiln.counters()
    assert c["captures"] == 1 and c["cache_hits"] == 3 and c["eager_calls"] == 0, c
    assert c["compiled_backward_calls"] == 3, c


def test_another_module_object_is_not_served_the_first_ones_program():
    a, b = make_model(0), make_model(1)
    f = kiln.compile(lambda m, x: m(x))
    x = torch.randn(5, 12)
    with torch.no_grad():
        for _ in range(2):
            assert_same(f(a, x), a(x))
            assert_same(f(b, x), b(x))
    assert kiln.counters()["captures"] == 2


def test_mode_and_replaced_parameters_are_guarded():
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6))
    f = kiln.compile(lambda mod, x: mod(x) * 2)
    x = torch.randn(10, 6)
    with torch.no_grad():
        assert_same(f(m, x), m(x) * 2)  # train mode: the batch's statistics
        m.eval()
        assert_same(f(m, x), m(x) * 2)  # eval mode: running statistics, not the batch's
        m[0].weight = torch.nn.Parameter(torch.randn(6, 6))  # a new parameter object
        assert_same(f(m, x), m(x) * 2)
        m[0].weight.mul_(0.5)  # in place: the same object, read at call time
        assert_same(f(m, x), m(x) * 2)
    assert kiln.counters()["captures"] >= 2  # train and eval are two programs
