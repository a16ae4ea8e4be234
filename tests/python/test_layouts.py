"""Layouts kiln chooses for the values it stores (Note [Channels-last convolutions]): values a
2-D convolution reads are written channels-last, the convolution's result is read as torch
returns it, and everything the caller sees keeps eager's values and strides."""

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, make_input


def check(fn, args):
    """Compiled twice against eager (values and, where eager's are dense, strides), with the
    convolutions running as fallback ops inside the program and no call run wholly eagerly;
    then on new values of the same layout."""
    f = kiln.compile(fn)
    for _ in range(2):
        assert_same(f(*args), fn(*args), check_layout=True)
    fresh = [a * -0.5 for a in args]
    assert_same(f(*fresh), fn(*fresh), check_layout=True)
    c = kiln.counters()
    assert c["eager_calls"] == 0 and c["captures"] == 1, c
    return f


def conv_operand_strides(f):
    """Strides of the buffers the program hands to its eager ops (shared / extern buffers)."""
    out = []
    for p in kiln._kernels._compiled_of(f).compiled_programs():
        for line in p.loop_ir.splitlines():
            if line.startswith("buf") and (" shared " in line or " extern " in line):
                out.append(line)
    return out


def test_conv_chain_runs_channels_last_and_matches_eager():
    w1, w2 = make_input((16, 8, 3, 3)), make_input((16, 1, 3, 3))
    scale, shift = make_input((16, 1, 1)), make_input((16, 1, 1))

    def g(x):
        h = F.silu(F.conv2d(x * 2, w1, padding=1) * scale + shift)   # computed operand
        h = F.conv2d(h, w2, padding=1, groups=16)                     # depthwise on it
        return torch.sigmoid(h) + 1                                   # output: eager's NCHW
    f = check(g, (make_input((2, 8, 9, 7)),))
    lines = conv_operand_strides(f)
    # x * 2 [2, 8, 9, 7] and silu(...) [2, 16, 9, 7] are stored NHWC: channel stride 1
    assert any("float32[2, 8, 9, 7] strides [504, 1, 56, 8]" in l for l in lines), lines
    assert any("float32[2, 16, 9, 7] strides [1008, 1, 112, 16]" in l and "shared" in l for l in lines), lines


def test_argument_operand_is_copied_once_and_output_keeps_eager_layout():
    w = make_input((6, 4, 1, 1))
    b = make_input((6,))
    g = lambda x: F.relu(F.conv2d(x, w, b))
    f = check(g, (make_input((3, 4, 5, 5)),))
    names = [k.name for k in kiln.kernels(f)]
    assert any("cast" in n for n in names), names  # the channels-last copy of the argument


@pytest.mark.parametrize("shape", [(2, 1, 5, 5), (2, 6, 1, 1), (1, 3, 1, 7)])
def test_shapes_where_layout_does_not_matter(shape):
    # one channel or one pixel: both layouts are the same memory and torch calls it contiguous
    c = shape[1]
    w = make_input((4, c, 1, 1))
    check(lambda x: F.conv2d(torch.tanh(x), w) * 3, (make_input(shape),))


def test_conv_result_returned_directly_keeps_eager_strides():
    w = make_input((5, 3, 3, 3))
    check(lambda x: F.conv2d(x.exp(), w, padding=1), (make_input((2, 3, 6, 6)),))


def test_module_with_batchnorm_in_eval():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.SiLU(),
                            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.copy_(make_input((8,)))
            bn.running_var.copy_(make_input((8,), low=0.5, high=2.0))
    x = make_input((2, 3, 10, 10))
    f = kiln.compile(m)
    with torch.no_grad():
        for _ in range(2):
            assert_same(f(x), m(x), check_layout=True)
    assert kiln.counters()["eager_calls"] == 0
