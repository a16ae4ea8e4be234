"""Batch norm in training mode (capture/batch_norm_ops.h) against eager: nn.BatchNorm1d/2d in
train() compiled whole (batch statistics, running_mean / running_var / num_batches_tracked
written back into the buffers on every call), native_batch_norm called directly (its saved mean
and invstd, running statistics passed as arguments, none at all, eps = 0 on a constant channel),
and native_batch_norm_backward in training and eval mode with every output_mask, optional
weight, channels-last, strided and broadcast gradients, float32 and float64."""

import copy

import pytest
import torch

import kiln
from kiln.testing import assert_same, check, check_mutating, make_input, assert_no_fallbacks

aten = torch.ops.aten


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


no_fallbacks = assert_no_fallbacks


def batch(shape, dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1.5).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


F32, F64 = torch.float32, torch.float64


@pytest.mark.parametrize("make,shape,dtype,channels_last", [
    (lambda: torch.nn.BatchNorm2d(5), (4, 5, 7, 9), F32, False),
    (lambda: torch.nn.BatchNorm2d(5), (4, 5, 7, 9), F32, True),
    (lambda: torch.nn.BatchNorm2d(5, momentum=0.3, eps=1e-3), (3, 5, 1, 1), F32, False),
    (lambda: torch.nn.BatchNorm1d(6), (8, 6), F32, False),
    (lambda: torch.nn.BatchNorm1d(6, affine=False), (3, 6, 11), F32, False),
    (lambda: torch.nn.BatchNorm2d(5, track_running_stats=False), (4, 5, 3, 5), F32, True),
    (lambda: torch.nn.BatchNorm2d(4).double(), (2, 4, 5, 3), F64, False),
])
def test_module_in_train_mode_updates_its_buffers(make, shape, dtype, channels_last):
    mod = make().train()
    for p in mod.parameters():  # random affine parameters
        p.copy_(torch.randn_like(p))
    ref = copy.deepcopy(mod)
    f = kiln.compile(mod)
    for step in range(4):
        x = batch(shape, dtype, channels_last, seed=step)
        assert_same(f(x), ref(x), rtol=1e-5, atol=1e-5, what=f"output of call {step}")
        for (name, got), want in zip(mod.named_buffers(), ref.buffers()):
            assert_same(got, want, rtol=1e-5, atol=1e-6, what=f"{name} after call {step}")
    c = kiln.counters()
    assert c["captures"] == 1 and c["cache_hits"] == 3, c
    no_fallbacks()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [False, True])
def test_native_batch_norm_writes_running_stats_given_as_arguments(dtype, affine):
    # its schema does not mark running_mean / running_var as written, but eager writes them
    w, b = (make_input((7,), dtype), make_input((7,), dtype)) if affine else (None, None)

    def f(x, rm, rv):
        return aten.native_batch_norm(x, w, b, rm, rv, True, 0.2, 1e-4)

    check_mutating(f, lambda s: (batch((5, 7, 13), dtype, seed=s), make_input((7,), dtype),
                                 make_input((7,), dtype, low=0.5, high=2.0)))
    no_fallbacks()


def test_native_batch_norm_without_running_stats_and_strided_input():
    x = make_input((9, 4, 6, 5), layout="transposed")
    w, b = make_input((4,)), make_input((4,))
    check(lambda x: aten.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5), (x,))
    no_fallbacks()


def test_zero_variance_with_zero_eps():
    # ATen's InvStd: 1 / sqrt(var + eps) is 0, not inf, when both are 0 (a constant channel)
    x = batch((6, 3, 4))
    x[:, 1] = 2.5
    check(lambda x: aten.native_batch_norm(x, None, None, None, None, True, 0.1, 0.0), (x,))
    no_fallbacks()


def backward_inputs(shape, dtype=torch.float32, channels_last=False):
    x = batch(shape, dtype, channels_last)
    _, mean, invstd = aten.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    c = shape[1]
    return x, make_input(shape, dtype), make_input((c,), dtype), make_input((c,), dtype), \
        make_input((c,), dtype, low=0.5, high=2.0), mean, invstd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,channels_last", [((4, 5, 7, 9), False), ((4, 5, 7, 9), True), ((16, 3), False),
                                                 ((2, 6, 37), False)])
def test_backward(shape, channels_last, train, dtype):
    x, g, w, rm, rv, mean, invstd = backward_inputs(shape, dtype, channels_last)

    def f(g, x, w, rm, rv, mean, invstd):
        return aten.native_batch_norm_backward(g, x, w, rm, rv, mean, invstd, train, 1e-5, [True, True, True])

    # grad_weight and grad_bias are sums over N * H * W products: float32 rounding of their size
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    check(f, (g, x, w, rm, rv, mean, invstd), **tol)
    no_fallbacks()


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, True], [True, True, False]])
def test_backward_output_mask_and_no_weight(mask):
    x, g, _, _, _, mean, invstd = backward_inputs((5, 4, 6))
    check(lambda g, x, mean, invstd: aten.native_batch_norm_backward(g, x, None, None, None, mean, invstd, True,
                                                                     1e-5, mask), (g, x, mean, invstd),
          rtol=1e-4, atol=1e-4)
    no_fallbacks()


def test_backward_of_a_broadcast_gradient():
    # out.sum().backward() hands batch norm an expanded (stride-0) gradient
    x, _, w, _, _, mean, invstd = backward_inputs((3, 4, 5, 5))
    g = make_input((1, 4, 5, 5)).expand(3, 4, 5, 5)
    check(lambda g, x, w, mean, invstd: aten.native_batch_norm_backward(g, x, w, None, None, mean, invstd, True,
                                                                        1e-5, [True, True, True]),
          (g, x, w, mean, invstd), rtol=1e-4, atol=1e-4)
    no_fallbacks()
