"""Pooling backward (capture/pooling_backward.h) called directly under torch.no_grad() in
compiled functions, against eager: max_pool2d/3d_with_indices_backward (a scatter-add at the
forward's indices, overlapping windows adding up), avg_pool2d/3d_backward (padding, ceil_mode,
count_include_pad, divisor_override, overlapping windows summed in eager's order) and
_adaptive_avg_pool2d/3d_backward (equal windows; others stay eager), on NCHW, channels-last and
unbatched inputs, float32 and float64."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_no_fallbacks, check, make_input

aten = torch.ops.aten


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


no_fallbacks = assert_no_fallbacks


def image(shape, dtype=torch.float32, channels_last=False):
    x = make_input(shape, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


WINDOWS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1)),
    dict(kernel_size=2),
    dict(kernel_size=5, stride=3, padding=2, ceil_mode=True),
]


def window(args, n=2):
    k = args["kernel_size"]
    k = [k] * n if isinstance(k, int) else list(k)
    s = args.get("stride", k)
    s = [s] * n if isinstance(s, int) else list(s)
    p = args.get("padding", 0)
    p = [p] * n if isinstance(p, int) else list(p)
    return k, s, p


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("args", WINDOWS + [dict(kernel_size=(3, 2), stride=1, padding=1, dilation=(2, 1))])
def test_max_pool2d_backward(args, channels_last):
    x = image((2, 3, 11, 9), channels_last=channels_last)
    k, s, p = window(args)
    d = args.get("dilation", 1)
    d = [d] * 2 if isinstance(d, int) else list(d)
    out, idx = F.max_pool2d(x, return_indices=True, **args)
    g = make_input(out.shape)
    check(lambda g, x, idx: aten.max_pool2d_with_indices_backward(g, x, k, s, p, d, args.get("ceil_mode", False), idx),
          (g, x, idx))
    no_fallbacks()


def test_max_pool_backward_after_its_forward_unbatched_3d_and_float64():
    def f(x, g):
        out, idx = aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])
        return out, aten.max_pool2d_with_indices_backward(g * out, x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx)
    check(f, (make_input((3, 9, 11), torch.float64), make_input((3, 5, 6), torch.float64)))
    no_fallbacks()
    kiln.reset()
    x = make_input((2, 3, 6, 7, 5))
    out, idx = F.max_pool3d(x, 3, 2, 1, return_indices=True)
    check(lambda g, x, idx: aten.max_pool3d_with_indices_backward(g, x, [3] * 3, [2] * 3, [1] * 3, [1] * 3, False, idx),
          (make_input(out.shape), x, idx))
    no_fallbacks()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("args", WINDOWS + [dict(kernel_size=3, stride=2, padding=1, divisor_override=4)])
def test_avg_pool2d_backward(args, count_include_pad, channels_last):
    x = image((2, 3, 11, 9), channels_last=channels_last)
    k, s, p = window(args)
    out = F.avg_pool2d(x, count_include_pad=count_include_pad, **args)
    g = make_input(out.shape)
    ceil, div = args.get("ceil_mode", False), args.get("divisor_override")
    check(lambda g, x: aten.avg_pool2d_backward(g, x, k, s, p, ceil, count_include_pad, div), (g, x))
    no_fallbacks()


def test_avg_pool_backward_unbatched_3d_and_float64():
    x = make_input((3, 10, 7), torch.float64)
    g = make_input((3, 5, 4), torch.float64)
    check(lambda g, x: aten.avg_pool2d_backward(g, x, [3, 2], [2, 2], [1, 1], False, True, None), (g, x))
    no_fallbacks()
    kiln.reset()
    x = make_input((2, 3, 6, 7, 5))
    out = F.avg_pool3d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    check(lambda g, x: aten.avg_pool3d_backward(g, x, [3] * 3, [2] * 3, [1] * 3, True, False, None),
          (make_input(out.shape), x))
    no_fallbacks()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("in_size,out_size", [((9, 12), (3, 4)), ((8, 8), (1, 1)), ((5, 7), (5, 7))])
def test_adaptive_avg_pool2d_backward(in_size, out_size, channels_last, dtype):
    x = image((2, 3) + in_size, dtype, channels_last)
    g = make_input((2, 3) + out_size, dtype)
    check(lambda g, x: aten._adaptive_avg_pool2d_backward(g, x), (g, x))
    no_fallbacks()


def test_adaptive_avg_pool_backward_3d_and_unequal_windows():
    x = make_input((2, 4, 6, 4, 9))
    check(lambda g, x: aten._adaptive_avg_pool3d_backward(g, x), (make_input((2, 4, 3, 2, 3)), x))
    no_fallbacks()
    kiln.reset()
    # 7 -> 3 has windows of sizes 3 and 2 (overlapping), 6 -> 4 too, 4 -> 9 outputs more than
    # it reads: adaptive_avg_pool_uneven_backward, eager's sums bit for bit
    x = make_input((2, 3, 7, 6))
    check(lambda g, x: aten._adaptive_avg_pool2d_backward(g, x) * 2, (make_input((2, 3, 3, 4)), x), rtol=0, atol=0)
    check(lambda g, x: aten._adaptive_avg_pool2d_backward(g, x), (make_input((2, 3, 9, 2)), make_input((2, 3, 4, 6))),
          rtol=0, atol=0)
    no_fallbacks()
