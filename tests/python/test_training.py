"""Compiled training steps inside PyTorch's autograd: gradients, optimizers, hooks, and what
must run eagerly (custom autograd.Functions, hooks inside the function, double backward)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln


@pytest.fixture(autouse=True)
def _fresh():
    kiln.reset()
    yield
    kiln.reset()


def rel_err(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return 0.0
    scale = max(float(b.abs().max()), 1e-6) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 37), nn.GELU(), nn.Linear(37, 29), nn.ReLU(), nn.Linear(29, 5))


def train_both(model, batches, loss_fn, opt_fn=None, steps=3):
    """Runs `steps` training steps on an eager copy and a kiln-compiled copy of `model`; returns
    (max relative loss error, max relative gradient error, max relative parameter error)."""
    me, mk = copy.deepcopy(model), copy.deepcopy(model)
    ck = kiln.compile(mk)
    oe = (opt_fn or (lambda p: torch.optim.SGD(p, lr=0.1)))(me.parameters())
    ok = (opt_fn or (lambda p: torch.optim.SGD(p, lr=0.1)))(mk.parameters())
    errs = [0.0, 0.0, 0.0]
    for i in range(steps):
        batch = batches(i)
        torch.manual_seed(100 + i)
        le = loss_fn(me, *batch)
        le.backward()
        torch.manual_seed(100 + i)
        lk = loss_fn(ck, *batch)
        lk.backward()
        errs[0] = max(errs[0], rel_err(lk.detach(), le.detach()))
        for a, b in zip(mk.parameters(), me.parameters()):
            errs[1] = max(errs[1], rel_err(a.grad, b.grad))
        oe.step()
        ok.step()
        oe.zero_grad()
        ok.zero_grad()
        for a, b in zip(mk.parameters(), me.parameters()):
            errs[2] = max(errs[2], rel_err(a.detach(), b.detach()))
        for a, b in zip(mk.buffers(), me.buffers()):
            errs[2] = max(errs[2], rel_err(a.double(), b.double()))
    return errs


def compiled_everything(steps):
    c = kiln.counters()
    assert c["eager_calls"] == 0, c["reasons"]
    assert c["compiled_forward_calls"] == steps - 1
    assert c["compiled_backward_calls"] == steps - 1


def test_mlp_matches_eager_over_steps():
    errs = train_both(mlp(), lambda i: (torch.randn(8, 13), torch.randint(0, 5, (8,))),
                      lambda m, x, y: F.cross_entropy(m(x), y), steps=4)
    assert max(errs) < 5e-5, errs
    compiled_everything(4)


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam", "adamw", "rmsprop", "adagrad"])
def test_optimizers_see_compiled_gradients(opt):
    make = {
        "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    }[opt]
    errs = train_both(mlp(), lambda i: (torch.randn(6, 13),), lambda m, x: m(x).square().mean(), make)
    assert max(errs) < 5e-4, errs
    compiled_everything(3)


def test_loss_inside_the_compiled_function_and_input_gradients():
    torch.manual_seed(1)
    w = torch.randn(11, 7, requires_grad=True)
    b = torch.randn(7, requires_grad=True)

    def f(x, t):
        return F.mse_loss(torch.tanh(x @ w + b) * 2.0, t)

    fk = kiln.compile(f)
    for i in range(3):
        x = torch.randn(9, 11, requires_grad=True)
        t = torch.randn(9, 7)
        ge = torch.autograd.grad(f(x, t), [x, w, b])
        gk = torch.autograd.grad(fk(x, t), [x, w, b])
        for a, e in zip(gk, ge):
            assert rel_err(a, e) < 1e-5
    compiled_everything(3)


def test_gradient_accumulation_and_retain_graph():
    m = mlp()
    mk = kiln.compile(copy.deepcopy(m))
    x = torch.randn(4, 13)
    for model in (m, mk):
        model(x).sum().backward()  # capture (kiln) / plain
        out = model(x).sum()
        out.backward(retain_graph=True)
        out.backward()  # the same graph again: gradients accumulate
    for a, b in zip(mk.parameters(), m.parameters()):
        assert rel_err(a.grad, b.grad) < 1e-5
    assert kiln.counters()["compiled_backward_calls"] == 2


def test_frozen_parameters_get_no_gradient_and_change_the_guards():
    m = mlp()
    for p in m[0].parameters():
        p.requires_grad_(False)
    mk = kiln.compile(copy.deepcopy(m))
    x = torch.randn(5, 13)
    for _ in range(2):
        m(x).sum().backward()
        mk(x).sum().backward()
    assert all(p.grad is None for p in mk[0].parameters())
    for a, b in zip(mk.parameters(), m.parameters()):
        assert rel_err(a.grad, b.grad) < 1e-5
    for p in mk[0].parameters():
        p.requires_grad_(True)
    mk(x).sum().backward()  # requires_grad is guarded: a new capture
    assert kiln.counters()["captures"] == 2


def test_partial_backward_of_several_outputs_and_non_differentiable_ones():
    def f(x, w):
        h = x @ w
        return h.relu(), torch.sigmoid(h), h.argmax(-1)

    fk = kiln.compile(f)
    w = torch.randn(6, 4, requires_grad=True)
    for _ in range(3):
        x = torch.randn(3, 6, requires_grad=True)
        a, _, idx = fk(x, w)
        ae, _, idxe = f(x, w)
        assert not idx.requires_grad and torch.equal(idx, idxe)
        gk = torch.autograd.grad(a.sum(), [x, w])  # the sigmoid output gets no gradient
        ge = torch.autograd.grad(ae.sum(), [x, w])
        for p, q in zip(gk, ge):
            assert rel_err(p, q) < 1e-5
    compiled_everything(3)


def test_parameter_hooks_run_once_per_backward():
    calls = {"eager": 0, "kiln": 0}
    m = mlp()
    mk = kiln.compile(copy.deepcopy(m))
    for model, key in ((m, "eager"), (mk, "kiln")):
        model[0].weight.register_hook(lambda g, key=key: calls.__setitem__(key, calls[key] + 1) or g * 3)
    x = torch.randn(4, 13)
    for _ in range(3):
        m(x).sum().backward()
        mk(x).sum().backward()
    assert calls["kiln"] == calls["eager"] == 3  # the capture's traced backward ran none
    for a, b in zip(mk.parameters(), m.parameters()):
        assert rel_err(a.grad, b.grad) < 1e-5


def test_hooks_inside_the_function_run_eagerly():
    seen = []

    def f(x):
        y = x * 2
        y.register_hook(lambda g: seen.append(1))
        return y.sum()

    fk = kiln.compile(f)
    for _ in range(2):
        fk(torch.randn(3, requires_grad=True)).backward()
    assert len(seen) == 2
    c = kiln.counters()
    assert c["compiled_backward_calls"] == 0
    assert any("register_hook" in r for r in c["reasons"])


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 5  # deliberately not the true derivative: kiln must keep it


def test_custom_autograd_function_runs_eagerly():
    fk = kiln.compile(lambda x: _Double.apply(x).sum())
    for _ in range(2):
        x = torch.randn(4, requires_grad=True)
        fk(x).backward()
        assert torch.equal(x.grad, torch.full((4,), 5.0))
    assert any("custom autograd.Function" in r for r in kiln.counters()["reasons"])


def test_module_full_backward_hooks_run_eagerly():
    calls = []
    m = mlp()
    m[2].register_full_backward_hook(lambda *a: calls.append(1))
    mk = kiln.compile(m)
    for _ in range(2):
        mk(torch.randn(3, 13)).sum().backward()
    assert len(calls) == 2


def test_tensor_requiring_grad_made_inside_runs_eagerly():
    store = []

    def f(x):
        w = torch.ones(3, requires_grad=True)
        store.append(w)
        return (x * w).sum()

    fk = kiln.compile(f)
    for _ in range(2):
        fk(torch.randn(3, requires_grad=True)).backward()
    assert all(w.grad is not None for w in store)


def test_double_backward_replays_the_call_eagerly():
    w = torch.randn(5, requires_grad=True)
    fk = kiln.compile(lambda x: (torch.tanh(x * w) * F.dropout(x, 0.3)).sum())
    f = lambda x: (torch.tanh(x * w) * F.dropout(x, 0.3)).sum()  # noqa: E731
    for i in range(3):
        x = torch.randn(5, requires_grad=True)
        torch.manual_seed(i)
        g, gx = torch.autograd.grad(fk(x), [w, x], create_graph=True)
        hk = torch.autograd.grad((g * g).sum() + gx.sum(), [w, x])
        torch.manual_seed(i)
        g, gx = torch.autograd.grad(f(x), [w, x], create_graph=True)
        he = torch.autograd.grad((g * g).sum() + gx.sum(), [w, x])
        for a, b in zip(hk, he):
            assert rel_err(a, b) < 1e-6
    assert any("double backward" in r for r in kiln.counters()["reasons"])
    assert kiln.counters()["compiled_forward_calls"] == 2  # the forward ran compiled


def test_double_backward_of_a_call_that_writes_buffers_is_a_clear_error():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    mk = kiln.compile(m)
    x = torch.randn(6, 4)
    torch.autograd.grad(mk(x).square().sum(), list(m.parameters()), create_graph=True)  # capture: eager
    with pytest.raises(RuntimeError, match="cannot replay the call eagerly"):
        torch.autograd.grad(mk(x).square().sum(), list(m.parameters()), create_graph=True)


def test_inplace_change_of_a_saved_parameter_raises_as_eager():
    lin = nn.Linear(4, 4)
    mk = kiln.compile(lin)
    x = torch.randn(2, 4, requires_grad=True)
    mk(x).sum().backward()
    out = mk(x).sum()
    with torch.no_grad():
        lin.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_dropout_draws_eagers_mask_with_the_same_seed():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 3)).train()
    errs = train_both(m, lambda i: (torch.randn(7, 16),), lambda mod, x: mod(x).square().mean(), steps=3)
    assert max(errs) < 1e-5, errs
    compiled_everything(3)


def test_no_grad_calls_use_an_inference_program():
    m = mlp()
    mk = kiln.compile(m)
    x = torch.randn(3, 13)
    mk(x).sum().backward()
    mk(x).sum().backward()
    with torch.no_grad():
        y = mk(x)
        y = mk(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, m(x).detach())


def test_kernels_are_marked_forward_and_backward():
    mk = kiln.compile(mlp())
    mk(torch.randn(3, 13)).sum().backward()
    phases = {k.phase for k in kiln.kernels(mk)}
    assert phases == {"forward", "backward"}


SHAPES = [(1, 13), (7, 13), (0, 13)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_edge_batch_sizes(shape):
    m = mlp()
    mk = kiln.compile(copy.deepcopy(m))
    for _ in range(2):
        x = torch.randn(*shape, requires_grad=True)
        xk = x.detach().clone().requires_grad_()
        m(x).sum().backward()
        mk(xk).sum().backward()
        assert rel_err(xk.grad, x.grad) < 1e-5
    for a, b in zip(mk.parameters(), m.parameters()):
        assert rel_err(a.grad, b.grad) < 1e-5


def test_non_contiguous_inputs_and_expanded_gradients():
    w = torch.randn(6, 6, requires_grad=True)

    def f(x):
        return torch.sigmoid(x.t() @ w) * 3

    fk = kiln.compile(f)
    base = torch.randn(6, 9)
    for _ in range(2):
        x = base.clone().requires_grad_()
        xk = base.clone().requires_grad_()
        # a sum's gradient reaches the output expanded (stride 0)
        f(x).sum().backward()
        fk(xk).sum().backward()
        assert rel_err(xk.grad, x.grad) < 1e-5


def test_check_mode_compares_gradients_with_eager():
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 2)).train()
    ref = copy.deepcopy(m)
    mk = kiln.compile(m)
    with kiln.config.patch(check=1):
        for i in range(3):
            x = torch.randn(5, 6)
            torch.manual_seed(i)
            mk(x).square().sum().backward()
            torch.manual_seed(i)
            ref(x).square().sum().backward()
    assert kiln.counters()["compiled_backward_calls"] == 2
    # the reference run inside check mode must not update the batch norm's buffers a second time
    for a, b in zip(m.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)


def test_check_mode_catches_a_wrong_gradient():
    w = torch.randn(3, 3, requires_grad=True)
    f = kiln.compile(lambda x: torch.tanh(x @ w).sum())
    with kiln.config.patch(check=1, inject_bug="gradient"):
        f(torch.randn(2, 3)).backward()  # capture: eager
        with pytest.raises(kiln.AccuracyError, match="compiled backward"):
            f(torch.randn(2, 3)).backward()


@pytest.mark.parametrize("grad", [False, True])
def test_dropout_on_transposed_activations_draws_eagers_masks(grad):
    # ATen's CPU bernoulli_ draws along the tensor's memory order: kiln's fallback must fill a
    # tensor with eager's layout (an attention block's dropouts act on permuted activations).
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.5, batch_first=True).train()
    lk = kiln.compile(layer)
    x = torch.randn(2, 5, 16)
    with torch.set_grad_enabled(grad):
        for i in range(3):
            torch.manual_seed(i)
            got = lk(x)
            torch.manual_seed(i)
            want = layer(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert kiln.counters()["eager_calls"] == 0


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if x.sum() > 0:  # a graph break: each branch continues in its own segment
            h = F.gelu(self.b(h))
        else:
            h = F.relu(self.b(h)) * 2
        steps = int((h > 0).any().item()) + 1  # another one, whose value the rest uses
        return (self.c(h) / steps).square().mean()


def test_gradients_flow_across_graph_breaks():
    m = _Branchy()
    me = copy.deepcopy(m)
    mk = kiln.compile(m)
    for i in range(6):
        x = torch.randn(5, 8) + (1.0 if i % 2 else -1.0)
        m.zero_grad()
        me.zero_grad()
        mk(x).backward()
        me(x).backward()
        for a, b in zip(m.parameters(), me.parameters()):
            assert rel_err(a.grad, b.grad) < 1e-5
    c = kiln.counters()
    assert c["eager_calls"] == 0, c["reasons"]
    assert c["captures"] == 2 and c["compiled_backward_calls"] >= 12  # three segments per later call
    assert {k.phase for k in kiln.kernels(mk)} == {"forward", "backward"}


def test_a_value_that_feeds_only_an_unused_segment_gets_no_gradient():
    """x @ w feeds, past a graph break, only a clamp whose result is unused, while the segment
    after the break returns something else: eager never differentiates x @ w, so a NaN in w
    must not reach x's gradient (kiln.fuzz --train, seed 1502: its zero tangent met the NaN
    through the product)."""
    def f(x, k, w):
        d = x @ w
        y = torch.nn.functional.layer_norm(x, (13,))
        d.clamp(k - k, 0.5)  # a tensor bound: a graph break; the clamp's result is unused
        return y * 2

    cf = kiln.compile(f)
    k = torch.tensor(3)
    for _ in range(3):
        x = torch.randn(13, requires_grad=True)
        w = torch.randn(13)
        w[4] = float("nan")
        g = torch.randn(13)
        got, = torch.autograd.grad(cf(x, k, w), x, g)
        want, = torch.autograd.grad(f(x, k, w), x, g)
        torch.testing.assert_close(got, want)
    c = kiln.counters()
    assert c["compiled_backward_calls"] >= 2 and c["eager_calls"] == 0, c["reasons"]


def test_a_weight_used_on_both_sides_of_a_break_runs_eagerly():
    w = torch.randn(6, 6, requires_grad=True)

    def f(x):
        h = torch.tanh(x @ w)
        if h.sum() > 0:
            h = h * 2
        return (h @ w).sum()  # w again, after the break: per-segment gradients would count it twice

    fk = kiln.compile(f)
    for _ in range(3):
        x = torch.randn(4, 6)
        ge, = torch.autograd.grad(f(x), [w])
        gk, = torch.autograd.grad(fk(x), [w])
        assert rel_err(gk, ge) < 1e-5
    assert any("both directly and through a value carried" in r for r in kiln.counters()["reasons"])


def test_fine_tuning_with_frozen_batch_norm_compiles():
    # eval() batch norm with parameters that require grad: its backward reads the running
    # statistics, and eager's (empty) saved statistics are recorded so the backward can take them
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].running_mean.normal_()
    errs = train_both(m, lambda i: (torch.randn(2, 3, 9, 7),), lambda mod, x: mod(x).square().mean())
    assert max(errs) < 1e-4, errs
    compiled_everything(3)


def test_prod_in_a_training_step_runs_eagerly_with_eagers_gradient():
    # Under a dispatch mode autograd takes prod's tensor-subclass formula, which differs from
    # eager's for NaN and inf: kiln keeps such a step eager rather than bake that formula in.
    fk = kiln.compile(lambda x: x.prod(1).sum())
    x = torch.tensor([[float("nan"), 2.0], [float("inf"), 3.0], [1.0, 0.0]], requires_grad=True)
    for _ in range(2):
        got, = torch.autograd.grad(fk(x), [x])
        want, = torch.autograd.grad(x.prod(1).sum(), [x])
        torch.testing.assert_close(got, want, equal_nan=True)
    assert any("ProdBackward" in r for r in kiln.counters()["reasons"])


def test_inputs_reached_only_through_unused_outputs_get_no_gradient():
    w = torch.randn(4, requires_grad=True)

    def f(x, y):
        return (x * w).tanh(), y * 3

    fk = kiln.compile(f)
    for _ in range(3):
        x, y = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
        a, _ = fk(x, y)
        a.sum().backward()
        assert y.grad is None and x.grad is not None  # eager leaves y.grad None, not zeros
    assert kiln.counters()["compiled_backward_calls"] == 2


def test_an_unused_output_whose_backward_meets_inf_does_not_poison_the_gradients():
    z = torch.tensor([0.0, 1.0, 2.0])

    def f(x, w):
        return (x * w).sum(), (w / z).sum()  # the second's backward has 1 / 0 = inf

    fk = kiln.compile(f)
    for _ in range(3):
        x, w = torch.randn(3), torch.randn(3, requires_grad=True)
        gk, = torch.autograd.grad(fk(x, w)[0], [w])  # the second output gets no gradient
        ge, = torch.autograd.grad(f(x, w)[0], [w])
        torch.testing.assert_close(gk, ge)  # eager: x; zeros for the unused output give 0 * inf


def test_a_value_only_read_into_python_gets_no_gradient():
    def f(x):
        v = x.var(None, correction=2)  # a 0-dim x: var divides by -1; its backward would be nan
        if torch.where(v.ceil() >= 1.0, v, 3.5).amax().item() > 2.0:
            return F.softplus(x) + 1
        return F.softplus(x) * 2

    fk = kiln.compile(f)
    for i in range(3):
        x = torch.tensor(0.3 * i - 0.5, requires_grad=True)
        gk, = torch.autograd.grad(fk(x), [x])
        ge, = torch.autograd.grad(f(x), [x])
        torch.testing.assert_close(gk, ge)


def test_lstm_and_group_norm_training_steps_compile():
    # nn.LSTM runs mkldnn_rnn_layer, which returns its workspace only with grad mode on (a
    # fallback op re-enables it inside the compiled forward); group norm's backward reads the
    # per-group statistics its forward records.
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
    errs = train_both(lstm, lambda i: (torch.randn(3, 5, 8),), lambda m, x: m(x)[0].square().mean())
    assert max(errs) < 1e-4, errs
    compiled_everything(3)
    kiln.reset()
    gn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 2, 1))
    errs = train_both(gn, lambda i: (torch.randn(2, 3, 7, 9),), lambda m, x: m(x).square().mean())
    assert max(errs) < 1e-4, errs
    compiled_everything(3)
