"""Every backward family kiln compiles, checked against float64 finite differences with
torch.autograd.gradcheck on the compiled function (its analytical gradients are kiln's compiled
backward; the numerical ones come from its compiled forward), and against eager's gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

import kiln

D = torch.float64


def _r(*shape, low=-1.5, high=1.5):
    return (torch.rand(*shape, dtype=D) * (high - low) + low).requires_grad_()


CASES = {
    "pointwise": (lambda x, y: (torch.tanh(x) * torch.sigmoid(y) + torch.exp(-x * x) / (1 + y * y)).sin(),
                  lambda: (_r(3, 5), _r(3, 5))),
    "activations": (lambda x: F.gelu(x, approximate="tanh") + F.silu(x) + F.mish(x) + F.elu(x) + F.softplus(x)
                    + F.hardswish(x) + F.leaky_relu(x, 0.1), lambda: (_r(4, 7),)),
    "broadcast_reductions": (lambda x, b: ((x + b).amax(1) + (x * b).mean(0).sum() + x.var(1, correction=1)
                                           + x.norm(dim=1) + torch.logsumexp(x, 1)), lambda: (_r(4, 6), _r(6))),
    "softmax_log_softmax": (lambda x: x.softmax(-1) * 2 + x.log_softmax(0), lambda: (_r(5, 4),)),
    "layer_and_rms_norm": (lambda x, w, b: F.layer_norm(x, (6,), w, b, 1e-5)
                           + F.rms_norm(x, (6,), w, 1e-6), lambda: (_r(3, 6), _r(6), _r(6))),
    "matmul_linear": (lambda x, w, b, v: torch.tanh(F.linear(x, w, b)) @ v, lambda: (_r(4, 3), _r(5, 3), _r(5), _r(5, 2))),
    "bmm_views": (lambda a, b: (a.transpose(1, 2) @ b).permute(2, 0, 1).reshape(-1, 3)[1:, ::2],
                  lambda: (_r(2, 4, 3), _r(2, 4, 3))),
    "cat_stack_slice": (lambda x, y: torch.cat([x[:, :2] * 2, torch.stack([y, y * y], 1).flatten(1)], 1)[:, 1:].exp(),
                        lambda: (_r(3, 4), _r(3, 2))),
    "gather_embedding": (lambda t, i: F.embedding(i, t).sum(1) + t.gather(0, i[:, :1].expand(-1, 3)),
                         lambda: (_r(6, 3), torch.tensor([[0, 2], [5, 5], [1, 3]]))),
    "cross_entropy": (lambda x: F.cross_entropy(x, torch.tensor([1, 0, 3, 2]), label_smoothing=0.1, ignore_index=2),
                      lambda: (_r(4, 5),)),
    "pooling_upsample": (lambda x: F.interpolate(F.max_pool2d(x, 2) + F.avg_pool2d(x, 2), scale_factor=2,
                                                 mode="bilinear"), lambda: (_r(1, 2, 4, 6),)),
    "upsample_nearest_and_linear": (lambda x: F.interpolate(x, size=(7, 5), mode="nearest")[..., 1:, :].sum(-1)
                                    + F.interpolate(x[:, :, 0], size=9, mode="linear", align_corners=True)[..., :6],
                                    lambda: (_r(2, 2, 3, 4),)),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  lambda: (_r(1, 2, 4, 3), _r(1, 2, 4, 3), _r(1, 2, 4, 3))),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         lambda: (_r(4, 3, 2), _r(3), _r(3))),
    "scatter_index_add": (lambda x, s: x.index_add(0, torch.tensor([0, 2, 0]), s * 2).scatter_add(
        1, torch.tensor([[1, 0], [0, 0], [1, 1]]), s[:, :2]), lambda: (_r(3, 3), _r(3, 3))),
    "where_clamp_abs": (lambda x: torch.where(x > 0.2, x.clamp(-0.5, 0.7), x.abs() * 3) + x.pow(3),
                        lambda: (_r(5, 5),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_backward_matches_finite_differences(name):
    fn, make = CASES[name]
    fk = kiln.compile(fn)
    inputs = make()
    fk(*inputs)  # capture (eager), so that gradcheck's calls below run compiled
    assert torch.autograd.gradcheck(fk, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    # and the same gradients as eager's, for a random output gradient
    out = fk(*inputs)
    g = torch.randn_like(out)
    diff = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad(out, diff, g)
    want = torch.autograd.grad(fn(*inputs), diff, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    c = kiln.counters()
    assert c["eager_calls"] == 0 and c["compiled_backward_calls"] > 0, c["reasons"]
    assert not c["fallback_op_counts"], c["fallback_op_counts"]
