"""Attention for training (capture/attention_ops.h), called directly as ATen ops under
torch.no_grad() in compiled functions, against eager: _scaled_dot_product_flash_attention_for_cpu
with its logsumexp, and its backward (probabilities rebuilt from the logsumexp), causal with
L != S, additive masks broadcast over batch and heads with rows they hide entirely (output,
logsumexp and gradients 0 there, as eager's), grouped-query heads, a given scale, strided
operands, float32 and float64. (Dropout: eager's CPU kernel refuses it; test_matmul.py
checks that F.scaled_dot_product_attention with dropout stays eager.)"""

import pytest
import torch

import kiln
from kiln.testing import check, make_input, assert_no_fallbacks

pytestmark = pytest.mark.skipif(not kiln._C.blas_library(), reason="no BLAS could be opened")

aten = torch.ops.aten
SDPA = aten._scaled_dot_product_flash_attention_for_cpu
SDPA_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward
# float32 gradients are sums of products over S or L: a few ulps of their magnitude
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: {}}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


no_fallbacks = assert_no_fallbacks


def check_compiled(fn, inputs, **tol):
    """kiln.testing.check without its layout test: grad_v (and grad_k and grad_v of grouped
    heads) is a product (a reduction) that kiln returns row-major, where eager's kernel returns
    a [B, S, H, D]-ordered tensor; the values must match, the capture and the cache hit happen,
    and nothing falls back."""
    f = check(fn, inputs, expect_compiled=False, **tol)
    c = kiln.counters()
    assert c["captures"] == 1 and c["cache_hits"] == 1, c
    no_fallbacks()
    return f


def qkv(b, h, hkv, L, S, d, dtype=torch.float32, layout="contiguous"):
    return (make_input((b, h, L, d), dtype, layout), make_input((b, hkv, S, d), dtype, layout),
            make_input((b, hkv, S, d), dtype, layout))


def forward_and_backward(mask=None, causal=False, scale=None):
    """The forward's output and logsumexp, and the gradients of a random grad_out."""
    def f(q, k, v, g):
        out, lse = SDPA(q, k, v, is_causal=causal, attn_mask=mask, scale=scale)
        return (out, lse) + tuple(SDPA_BACKWARD(g, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale))
    return f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(7, 7), (5, 9), (9, 5), (1, 6)])
def test_forward_and_backward(causal, L, S, dtype):
    q, k, v = qkv(2, 3, 3, L, S, 16, dtype)
    g = make_input((2, 3, L, 16), dtype)
    check_compiled(forward_and_backward(causal=causal), (q, k, v, g), **TOL[dtype])
    no_fallbacks()


def strided(shape, layout, dtype=torch.float32):
    """[b, h, n, d] with strides a model gives it. Eager's fused kernel reads the last dim as
    dense (with a step there its results are wrong), so only the outer strides vary: "heads" is
    a projection's [b, n, h, d] output with its heads moved to dim 1, "offset" a slice of a
    larger batch along dim 0 and of the sequence (dim 2)."""
    b, h, n, d = shape
    if layout == "heads":
        return make_input((b, n, h, d), dtype).transpose(1, 2)
    return make_input((b + 1, h, n + 2, d), dtype)[1:, :, 1:-1]


@pytest.mark.parametrize("layout", ["heads", "offset"])
def test_strided_operands_and_a_given_scale(layout):
    q, k, v = (strided((2, 3, n, 12), layout) for n in (6, 10, 10))
    g = strided((2, 3, 6, 12), layout)
    check_compiled(forward_and_backward(causal=True, scale=0.3), (q, k, v, g), **TOL[torch.float32])


@pytest.mark.parametrize("mask_shape", [(7, 9), (2, 1, 7, 9), (1, 3, 1, 9)])
def test_masks_and_rows_they_hide(mask_shape):
    # -inf and large negative entries; rows the mask hides entirely have output, logsumexp and
    # gradients 0 in eager (its kernel takes the max as 0 and the sum as 1 there)
    q, k, v = qkv(2, 3, 3, 7, 9, 8)
    g = make_input((2, 3, 7, 8))
    mask = make_input(mask_shape)
    mask[..., :3] = -1e9
    if mask_shape[-2] > 1:
        mask[..., 2, :] = float("-inf")
        mask[..., 4, 1::2] = float("-inf")
    f = check_compiled(forward_and_backward(mask=mask), (q, k, v, g), **TOL[torch.float32])
    no_fallbacks()
    out, lse, dq, dk, dv = f(q, k, v, g)
    if mask_shape[-2] > 1:
        assert out[:, :, 2].eq(0).all() and lse[:, :, 2].eq(0).all() and dq[:, :, 2].eq(0).all()


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_heads(causal):
    # 6 query heads over 2 key/value heads: head h reads head h // 3; their gradients sum
    q, k, v = qkv(2, 6, 2, 5, 7, 8)
    g = make_input((2, 6, 5, 8))
    check_compiled(forward_and_backward(causal=causal), (q, k, v, g), **TOL[torch.float32])
    no_fallbacks()


def test_backward_alone_from_saved_values():
    # the backward program of a training step gets the output and logsumexp as inputs
    q, k, v = qkv(1, 2, 2, 6, 8, 8, torch.float64)
    mask = make_input((6, 8), torch.float64)
    mask[3] = float("-inf")
    out, lse = SDPA(q, k, v, attn_mask=mask)
    g = make_input(out.shape, torch.float64)
    check_compiled(lambda g, q, k, v, out, lse: SDPA_BACKWARD(g, q, k, v, out, lse, 0.0, False, attn_mask=mask),
          (g, q, k, v, out, lse))
    no_fallbacks()


def test_inference_output_alone_skips_the_logsumexp():
    # an unread logsumexp is dead code: the program is the forward's two products and row kernel
    q, k, v = qkv(2, 3, 3, 8, 8, 16)
    f = check(lambda q, k, v: SDPA(q, k, v)[0] * 2, (q, k, v))
    no_fallbacks()
    assert not any("log" in kern.name for kern in kiln.kernels(f))

