"""Note [Folding batch norm] (passes/fold_batch_norm.cpp): an eval batch norm after an eager
convolution runs as the convolution with scaled weights (and a shifted bias), where that is
valid and the weights are small beside the activation; elsewhere it stays a normalisation fused
into the kernels around it. Values are compared with eager in every case."""

import pytest
import torch
import torch.nn as nn

import kiln
from kiln.testing import assert_same, make_input


def _randomise(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.3, 2, generator=g)
        if bn.affine:
            bn.weight.uniform_(-2, 2, generator=g)
            bn.bias.uniform_(-1, 1, generator=g)
    return bn


def _weight_kernels(f, weight):
    """Compiled kernels over exactly the weight's elements: the folded weights."""
    n = weight.numel()
    return [k for k in kiln.kernels(f) if k.name.endswith("_mul") and f"0..{weight.shape[0]}" in k.loop_ir
            and str(n // weight.shape[0]) in k.loop_ir]


def _run(model, x, calls=2):
    f = kiln.compile(model)
    with torch.no_grad():
        for _ in range(calls):
            assert_same(f(x), model(x))
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()
    return f


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_conv_batch_norm_folds_into_the_weights(bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=bias)
    model = nn.Sequential(conv, _randomise(nn.BatchNorm2d(16, affine=affine), 1), nn.Conv2d(16, 4, 1)).eval()
    f = _run(model, make_input((2, 8, 24, 24)))
    assert _weight_kernels(f, conv.weight), [k.loop_ir for k in kiln.kernels(f)]


def test_folded_values_follow_parameter_updates():
    # the weights are arguments: a changed statistic or weight is seen on the next call
    model = nn.Sequential(nn.Conv2d(4, 8, 3), _randomise(nn.BatchNorm2d(8), 2)).eval()
    x = make_input((1, 4, 20, 20))
    f = kiln.compile(model)
    with torch.no_grad():
        assert_same(f(x), model(x))
        model[1].running_var.mul_(4)
        model[0].weight.add_(0.5)
        assert_same(f(x), model(x))


@pytest.mark.parametrize("case", ["groups", "conv1d", "stride_dilation", "edge_values", "zero_gamma"])
def test_folding_matches_eager(case):
    torch.manual_seed(1)
    if case == "groups":
        model, x = nn.Sequential(nn.Conv2d(8, 16, 3, groups=4), _randomise(nn.BatchNorm2d(16), 3)), \
            make_input((2, 8, 16, 16))
    elif case == "conv1d":
        model, x = nn.Sequential(nn.Conv1d(6, 12, 5), _randomise(nn.BatchNorm1d(12), 4), nn.GELU()), \
            make_input((3, 6, 100))
    elif case == "stride_dilation":
        model, x = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, dilation=2), _randomise(nn.BatchNorm2d(8), 5)), \
            make_input((2, 3, 33, 31))
    else:
        bn = _randomise(nn.BatchNorm2d(8), 6)
        if case == "zero_gamma":
            with torch.no_grad():
                bn.weight[::2] = 0
        model, x = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), bn), make_input((2, 4, 16, 16))
        if case == "edge_values":
            x = x.clone()
            x[0, 0, 3, 3], x[1, 2, 5, 7], x[0, 1, 9, 9] = float("inf"), float("nan"), -float("inf")
    _run(model.eval(), x)


@pytest.mark.parametrize("case", ["conv_output_used_twice", "transposed", "weight_larger_than_output"])
def test_batch_norm_that_does_not_fold_still_matches(case):
    torch.manual_seed(2)
    bn = _randomise(nn.BatchNorm2d(16), 7)
    if case == "conv_output_used_twice":
        conv = nn.Conv2d(8, 16, 3)

        class Both(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.bn = conv, bn

            def forward(self, x):
                y = self.conv(x)
                return self.bn(y) + y
        model, x = Both(), make_input((2, 8, 12, 12))
    elif case == "transposed":
        conv = nn.ConvTranspose2d(8, 16, 3)
        model, x = nn.Sequential(conv, bn), make_input((2, 8, 12, 12))
    else:
        conv = nn.Conv2d(64, 16, 3)  # 9216 weights for 16 * 1 * 1 outputs
        model, x = nn.Sequential(conv, bn), make_input((1, 64, 3, 3))
    f = _run(model.eval(), x)
    assert not _weight_kernels(f, conv.weight), [k.loop_ir for k in kiln.kernels(f)]
