"""Pooling and upsampling lowered to index arithmetic (capture/window_ops.h), against eager:
max/avg pooling (1-3 pooled dims, padding, stride, dilation, ceil_mode, count_include_pad,
divisor_override), max_pool's indices, adaptive average pooling, nearest / nearest-exact /
linear interpolation (align_corners both ways, sizes and scale factors), on NCHW and
channels-last inputs with NaN, +-inf and -0 in them; and that they fuse with their neighbours."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, check, make_input


def no_fallbacks(f):
    assert not kiln.counters()["fallback_op_counts"], kiln.counters()
    assert kiln.counters()["eager_calls"] == 0, kiln.counters()


def with_edges(shape, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 3
    flat = x.view(-1)
    n = flat.numel()
    for k, v in enumerate([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e30, -1e30]):
        flat[(k * 7919) % n] = v
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


LAYOUTS = [False, True]


def image(channels_last):
    """A random [2, 3, 11, 9] batch, NCHW or channels-last."""
    x = make_input((2, 3, 11, 9))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("args", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
    dict(kernel_size=2),
    dict(kernel_size=5, stride=3, padding=2, ceil_mode=True),
])
def test_max_pool2d_values_and_indices(args, channels_last):
    x = with_edges((2, 3, 11, 9), channels_last=channels_last)
    f = check(lambda t: F.max_pool2d(torch.relu(t) - 1, **args, return_indices=True), (x,))
    no_fallbacks(f)


def test_max_pool_of_windows_that_hold_only_minus_inf():
    # eager keeps the window's first element inside the input as the index (max starts at -inf)
    x = torch.full((1, 2, 5, 6), float("-inf"))
    x[0, 1, 2, 3] = 1.0
    check(lambda t: F.max_pool2d(t, 3, 2, 1, dilation=1, return_indices=True), (x,))
    check(lambda t: F.max_pool2d(t, 2, 1, 1, dilation=2, return_indices=True), (x,))


def test_max_pool_ties_of_signed_zeros_keep_the_first():
    x = torch.tensor([[[[-0.0, 0.0, 0.0, -0.0]]]])
    f = kiln.compile(lambda t: F.max_pool2d(t, (1, 2), return_indices=True))
    v, i = f(x)
    ev, ei = F.max_pool2d(x, (1, 2), return_indices=True)
    assert torch.equal(torch.signbit(v), torch.signbit(ev)) and torch.equal(i, ei)


def test_max_pool1d_and_3d():
    check(lambda t: F.max_pool1d(t, 3, 2, 1) * 2, (with_edges((2, 5, 13)),))
    no_fallbacks(None)
    check(lambda t: F.max_pool1d(t, 4, return_indices=True), (with_edges((2, 5, 13), seed=1),))
    check(lambda t: F.max_pool3d(t, 3, 2, 1, return_indices=True), (with_edges((2, 3, 6, 7, 5)),))
    check(lambda t: F.max_pool2d(t, 3, 2, 1), (with_edges((3, 9, 9)),))  # unbatched


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("args", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
    dict(kernel_size=2),
])
def test_avg_pool2d(args, channels_last):
    f = check(lambda t: F.avg_pool2d(t * 2, **args), (image(channels_last),))
    no_fallbacks(f)
    check(lambda t: F.avg_pool2d(t, **args), (with_edges((2, 3, 11, 9), channels_last=channels_last),))


def test_avg_pool1d_3d_and_float64():
    check(lambda t: F.avg_pool1d(t, 4, 3, 1), (make_input((2, 5, 13)),))
    check(lambda t: F.avg_pool3d(t, 2, ceil_mode=True), (make_input((2, 3, 5, 7, 5)),))
    check(lambda t: F.avg_pool2d(t, 3, 1, 1), (make_input((2, 3, 6, 6), dtype=torch.float64),))
    no_fallbacks(None)


@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_adaptive_avg_pool(channels_last):
    # Windows summed in eager's order and divided as its contiguous kernel divides: exact there,
    # with +-1e30 in the sums too (eager's channels-last kernel rounds its vector body apart).
    x = with_edges((2, 19, 12, 18), channels_last=channels_last)
    exact = 0 if not channels_last else None
    for size in [(4, 6), (12, 3), (2, 1)]:
        kiln.reset()
        check(lambda t: F.adaptive_avg_pool2d(t, size), (x,), atol=exact, rtol=exact)
        no_fallbacks(None)
    # (1, 1) is a mean at the ATen level (a reduction in kiln's own order)
    check(lambda t: F.adaptive_avg_pool2d(t, 1), (make_input((2, 3, 12, 18)),))


@pytest.mark.parametrize("channels_last", [False, True])
def test_adaptive_pools_with_uneven_windows(channels_last):
    # Note [Adaptive windows] in capture/window_ops.cpp (more in test_op_coverage.py)
    x = make_input((2, 3, 10, 9))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    check(lambda t: (F.adaptive_avg_pool2d(t + 1, (4, 4)) * 2, F.adaptive_max_pool2d(t, (3, 4), return_indices=True)),
          (x,))
    assert kiln.counters()["fallback_op_counts"] == {}, kiln.counters()


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("kw", [
    dict(scale_factor=2, mode="nearest"),
    dict(size=(7, 20), mode="nearest"),
    dict(scale_factor=1.7, mode="nearest"),
    dict(scale_factor=(0.5, 1.5), mode="nearest"),
    dict(scale_factor=1.7, mode="nearest-exact"),
    dict(size=(17, 5), mode="bilinear"),
    dict(size=(17, 5), mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bilinear"),
    dict(scale_factor=1.5, mode="bilinear", align_corners=True),
    dict(size=(4, 3), mode="bilinear"),
    dict(size=(1, 1), mode="bilinear", align_corners=True),
])
def test_interpolate_2d(kw, channels_last):
    f = check(lambda t: F.interpolate(t * 3, **kw), (image(channels_last),))
    no_fallbacks(f)


def test_interpolate_edges_1d_3d_and_integers():
    x = with_edges((2, 3, 6, 5))
    check(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), (x,))
    check(lambda t: F.interpolate(t, scale_factor=2, mode="bilinear"), (x,))
    check(lambda t: F.interpolate(t, size=30, mode="linear"), (make_input((2, 5, 13)),))
    check(lambda t: F.interpolate(t, scale_factor=3), (make_input((2, 5, 13)),))
    check(lambda t: F.interpolate(t, scale_factor=2, mode="trilinear"), (make_input((1, 2, 3, 4, 5)),))
    check(lambda t: F.interpolate(t, size=(13, 4), mode="bilinear"), (make_input((1, 2, 5, 6), dtype=torch.float64),))
    xi = torch.randint(0, 255, (2, 3, 5, 7), dtype=torch.uint8)  # images (eager has no int64 kernel)
    check(lambda t: F.interpolate(t, size=(9, 10)), (xi,))
    no_fallbacks(None)


def test_pooling_fuses_with_its_neighbours():
    # conv-free ResNet stem tail and a UNet up step: relu -> max_pool, and upsample -> add,
    # each one kernel with no buffer in between
    x = make_input((2, 8, 16, 16))
    f = check(lambda t: F.max_pool2d(torch.relu(t * 2 + 1), 3, 2, 1), (x,))
    assert len(kiln.kernels(f)) == 1, [k.name for k in kiln.kernels(f)]
    skip = make_input((2, 8, 32, 32))
    f = check(lambda t, s: F.interpolate(t, scale_factor=2, mode="nearest") + s, (x, skip))
    assert len(kiln.kernels(f)) == 1, [k.name for k in kiln.kernels(f)]
    no_fallbacks(f)


def test_module_with_pooling_layers():
    m = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1), torch.nn.AvgPool2d(2),
                            torch.nn.AdaptiveAvgPool2d((2, 2)), torch.nn.Upsample(scale_factor=2, mode="bilinear"),
                            torch.nn.Flatten()).eval()
    x = make_input((3, 4, 16, 16))
    f = kiln.compile(m)
    with torch.no_grad():
        assert_same(f(x), m(x))
        assert_same(f(x), m(x))
    no_fallbacks(f)


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_linear_upsample_along_a_dim_of_unchanged_size(channels_last, align_corners):
    # A dim whose size does not change is read at the element itself with weights 1 and 0 (as
    # ATen): a NaN neighbour stays out, an infinite element gives inf * 0 = nan (fuzz seed 7201243).
    x = with_edges((2, 3, 5, 7), channels_last=channels_last)
    x[0, 0, 0, :3] = torch.tensor([float("-inf"), float("nan"), 0.0])
    check(lambda t: F.interpolate(t, size=(9, 7), mode="bilinear", align_corners=align_corners), (x,))
    check(lambda t: F.interpolate(t, size=(5, 11), mode="bilinear", align_corners=align_corners), (x,))
    if not align_corners:
        check(lambda t: F.interpolate(t, scale_factor=(2.0, 1.1), mode="bilinear"), (x,))
    check(lambda t: F.interpolate(t[:, :, 0], size=7, mode="linear", align_corners=align_corners), (x,))
    x3 = with_edges((1, 2, 3, 4, 5))
    check(lambda t: F.interpolate(t, size=(3, 8, 5), mode="trilinear", align_corners=align_corners), (x3,))
