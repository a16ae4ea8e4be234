"""The CUDA backend.

(a) No GPU needed: kiln.codegen(fn, *cpu_args, target="cuda") emits CUDA C++ for every kernel of a
    broad set of functions (every pointwise op family, broadcasting, views, integer ops, casts,
    reductions, softmax, norms) and NVRTC compiles each one to PTX, so CI checks that every
    generated kernel compiles. Skipped, with the reason, only when libnvrtc cannot be found (or
    kiln was built without the CUDA backend).
(b) With a GPU (`-m gpu`, or run anyway when torch.cuda.is_available()): compiled kernels against
    eager CUDA on random inputs with inf/nan, odd sizes, views, and outputs poisoned before the
    run (so an element a kernel forgets to write cannot pass).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import _C
from kiln import _cuda
from kiln.testing import assert_same, make_input


def _nvrtc_skip_reason():
    if not _cuda.HAVE_CUDA_BACKEND:
        return "kiln._C was built without the CUDA backend (KILN_CUDA=OFF or define_cuda not registered)"
    status = _cuda.cuda_status()
    if not status["nvrtc"]:
        return f"libnvrtc not found (install nvidia-cuda-nvrtc or set KILN_NVRTC): {status['reason']}"
    return None


NVRTC_SKIP = _nvrtc_skip_reason()
needs_nvrtc = pytest.mark.skipif(NVRTC_SKIP is not None, reason=NVRTC_SKIP or "")
HAS_GPU = torch.cuda.is_available() and _cuda.HAVE_CUDA_BACKEND and _C.cuda_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU or NVRTC_SKIP is not None, reason="needs a CUDA GPU and NVRTC")

EPS = 1e-5


def R(*shape, dtype=torch.float32, low=None, high=None, layout="contiguous", nonzero=False):
    return lambda: make_input(shape, dtype, layout=layout, low=low, high=high, nonzero=nonzero)


# name -> (fn, [input makers]). Each graph compiles into one or more kernels.
CASES = {
    # -- pointwise: every unary family, on float32 and float64
    "unary_f32": (lambda x: (x.abs() + x.neg() + x.exp() + x.exp2() + x.expm1() + x.sin() + x.cos() + x.tan()
                             + x.tanh() + x.erf() + x.sigmoid() + x.floor() + x.ceil() + x.round() + x.trunc()
                             + x.sign() + torch.relu(x)), [R(45, 65)]),
    "unary_log_f32": (lambda x: x.log() + x.log2() + x.log1p() + x.sqrt() + x.rsqrt() + x.reciprocal(),
                      [R(1023, low=0.1, high=4)]),
    "unary_f64": (lambda x: x.exp() * x.tanh() + x.erf() - x.expm1() + x.abs().sqrt() + x.sin() / (x.cos() + 3),
                  [R(17, 5, dtype=torch.float64)]),
    "activations": (lambda x: F.silu(x) + F.gelu(x) + F.gelu(x, approximate="tanh") + F.mish(x) + F.hardswish(x)
                    + F.hardsigmoid(x) + F.softplus(x) + F.elu(x) + F.leaky_relu(x, 0.1) + F.hardtanh(x),
                    [R(7, 9)]),
    "binary_f32": (lambda a, b: (a + b, a - b, a * b, a / b, torch.maximum(a, b), torch.minimum(a, b),
                                 torch.fmod(a, b), torch.remainder(a, b), torch.floor_divide(a, b), a ** b.abs(),
                                 torch.pow(a, 2), a.clamp(-0.5, 0.5), torch.where(a > b, a, b)),
                   [R(45, 65), R(45, 65, nonzero=True)]),
    "compare_logical": (lambda a, b: ((a < b) & (a >= 0)) | ((a == b) ^ (a != 0)) | ~(a > b) | (a <= b) | a.isnan(),
                        [R(31, 33), R(33)]),
    "scalars_consts": (lambda x: x * 2.5 + 1 - 3.0 / (x.abs() + 1) + float("inf") * 0 + x.clamp(min=0),
                       [R(129)]),
    # -- broadcasting and views (index arithmetic over the source buffers)
    "broadcast": (lambda a, b, c: a * b + c, [R(3, 1, 5), R(4, 5), lambda: torch.tensor(1.7)]),
    "views": (lambda x: (x.t() * 2, x[1:, ::2] + 1, x.reshape(65, 45).permute(1, 0) - 1,
                         x.unsqueeze(0).expand(3, 45, 65) * 3, x.transpose(0, 1).contiguous()),
              [R(45, 65)]),
    "transposed_input": (lambda x, y: x + y, [R(45, 65, layout="transposed"), R(45, 65, layout="sliced")]),
    # -- integers, bools and casts
    "int_ops": (lambda a, b: (a + b, a - b, a * b, a // b, a % b, torch.fmod(a, b), a & b, a | b, a ^ b, ~a,
                              torch.maximum(a, b), a.abs(), -a, a.clamp(-3, 3)),
                [R(37, dtype=torch.int32), R(37, dtype=torch.int32, nonzero=True)]),
    "int64_ops": (lambda a, b: (a // b, a % b, a * 3 + b, torch.div(a, b, rounding_mode="trunc")),
                  [R(5, 7, dtype=torch.int64), R(5, 7, dtype=torch.int64, nonzero=True)]),
    "small_ints": (lambda a, b: (a + b, a * b, a // b, a.to(torch.int16) * 300),
                   [R(19, dtype=torch.int8), R(19, dtype=torch.int8, nonzero=True)]),
    "uint8_bool": (lambda a, m: (a + 250, a // 3, m & (a > 5), m | m.logical_not(), torch.where(m, a, a * 2)),
                   [R(23, dtype=torch.uint8, low=0, high=255), R(23, dtype=torch.bool)]),
    "casts": (lambda x: (x.to(torch.int32), x.to(torch.int64), x.to(torch.uint8), x.to(torch.bool), x.double(),
                         (x * 100).to(torch.int8), x.to(torch.int32).float() / 3),
              [R(41, low=-200, high=200)]),
    "float64_mix": (lambda x, y: (x + y.double()) * 0.5, [R(9, 11, dtype=torch.float64), R(9, 11)]),
    # -- reductions
    "sum_mean": (lambda x: (x.sum(-1), x.mean(0), x.sum((0, 1)), x.mean(-1, keepdim=True)), [R(33, 65)]),
    "amax_amin": (lambda x: (x.amax(-1), x.amin(0), x.max(), torch.max(x, 1)[0]), [R(33, 65)]),
    "argmax_argmin": (lambda x: (x.argmax(-1), x.argmin(0), x.argmax()), [R(33, 65)]),
    "prod_any_all": (lambda x: (x.prod(-1), (x > 0).any(-1), (x > -2).all(0)), [R(9, 12)]),
    "int_reductions": (lambda a: (a.sum(-1), a.amax(0), a.argmin(-1), a.prod(0)), [R(6, 7, dtype=torch.int32)]),
    "var_std": (lambda x: (x.var(-1), x.std(0), torch.var(x, -1, correction=0)), [R(33, 65)]),
    "logsumexp_norm": (lambda x: (torch.logsumexp(x, -1), torch.linalg.vector_norm(x, dim=-1)), [R(12, 40)]),
    "whole_tensor_sum": (lambda x: (x.sum(), x.mean(), x.amax()), [R(256, 1024)]),
    "reduce_middle_dim": (lambda x: x.sum(1), [R(4, 37, 6)]),
    "long_rows": (lambda x: x.sum(-1) + x.amax(-1), [R(3, 9000)]),
    "extent_one_reduce": (lambda x: x.sum(1), [R(8, 1, 5)]),
    "empty_reduce": (lambda x: (x.sum(-1), x.prod(-1), (x > 0).any(-1), (x > 0).all(-1), x.sum(-1) + x.sum(-1)),
                     [lambda: torch.randn(4, 0)]),
    # -- fused rows
    "softmax": (lambda x: F.softmax(x, -1), [R(64, 1000)]),
    "softmax_dim0": (lambda x: F.softmax(x, 0), [R(50, 30)]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [R(17, 129)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (96,), w, b, EPS), [R(33, 96), R(96), R(96)]),
    "rms_norm": (lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w, [R(31, 64), R(64)]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 4, w, b, EPS), [R(2, 8, 5, 5), R(8), R(8)]),
    "batch_norm_eval": (lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, False, 0.1, EPS),
                        [R(4, 6, 3), R(6), R(6, low=0.5, high=2), R(6), R(6)]),
    "bias_relu_residual": (lambda x, b, r: torch.relu(x + b) + r, [R(64, 256), R(256), R(64, 256)]),
    # -- pooling and upsampling (index arithmetic over windows)
    "pooling": (lambda x: (F.max_pool2d(torch.relu(x), 3, 2, 1), F.max_pool2d(x, 2, return_indices=True)[1],
                           F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                           F.adaptive_avg_pool2d(x, (3, 4))), [R(2, 3, 9, 8)]),
    "upsample": (lambda x: (F.interpolate(x, scale_factor=2, mode="nearest"),
                            F.interpolate(x, size=(11, 5), mode="bilinear"),
                            F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True)), [R(2, 3, 6, 4)]),
    # -- ops lowered at capture (capture/pointwise_ops.cpp): comparisons with inf, fused
    #    multiply-adds (lerp, addcmul), aminmax's two reductions, integer pow by squaring
    "op_coverage": (lambda x, y, w, i, e: (torch.isinf(x) | torch.isfinite(y), torch.isneginf(x), torch.isposinf(y),
                                           torch.lerp(x, y, w), torch.lerp(x, y, 0.7), torch.addcmul(x, y, w, value=0.5),
                                           torch.addcdiv(x, y, w + 1, value=2), *torch.aminmax(x, dim=1), i ** e,
                                           torch.select_scatter(x, y[0], 0, 3)),
                    [R(7, 33), R(7, 33), R(33, low=0, high=1), lambda: torch.randint(-5, 5, (33,), dtype=torch.int32),
                     lambda: torch.randint(-2, 30, (33,), dtype=torch.int32)]),
    "adaptive_pools_uneven": (lambda x: (F.adaptive_avg_pool2d(x, (5, 4)), *F.adaptive_max_pool2d(x, (4, 6), True)),
                              [R(2, 3, 11, 13)]),
    "index_put": (lambda x, i, v: (x.index_put((i,), v) * 2, x.index_put((i, i), v[0], accumulate=True)),
                  [R(5, 6, 7), lambda: torch.tensor([4, 0, -2]), R(7)]),
    "index_copy": (lambda b, i, k: (b * 2).index_copy(1, i, k + 1) * 3,
                   [R(4, 6, 3), lambda: torch.tensor([5, 1, 3]), R(4, 3, 3)]),
    # -- scans (Note [CUDA scans]): a chunk of the row per thread, rows short and long, along
    #    the contiguous dim or another, fused with the pointwise work that feeds them
    "scans": (lambda x, y, i: (torch.cumsum(x * 2, -1) + 1, torch.cumprod(x[:, :9] * 0.5 + 1, 1), y.cumsum(0),
                               torch.cumsum(i, 1), torch.cumsum(x > 0, 1), torch.cumprod(y[:3] + 1, 1)),
              [R(7, 1500), R(40, 3), lambda: torch.randint(-9, 9, (5, 33), dtype=torch.int32)]),
    "half_scans_bf16": (lambda x: (torch.cumsum(x, -1), torch.cumsum(x, 0) * 2),
                        [R(6, 300, dtype=torch.bfloat16)]),
    "cumsum_scatter_add": (lambda x, i, s: ((x * 2).cumsum(1) + 1, (x + 1).scatter_add(0, i, s) * 2),
                           [R(5, 4), lambda: torch.randint(0, 5, (3, 4)), R(3, 4)]),
    # -- scatters: folding ones update atomically (Note [CUDA folding scatters]), repeated
    #    indices included; replacing ones with distinct indices (eager's winner is unspecified)
    "scatters": (lambda x, s, i, j, k, l: ((x * 2).scatter_add(0, i, s) + 1, x.index_add(1, j, s[:4, :3], alpha=2),
                                           x.scatter_reduce(0, i, s, "amax"), x.scatter_reduce(0, i, s, "amin"),
                                           x.scatter_reduce(1, k, s[:4, :2] + 1, "prod"), x.index_copy(0, l, s[:2] * 3),
                                           x.scatter(1, k, s[:4, :2])),
                 [R(4, 37), R(9, 37), lambda: torch.randint(0, 4, (9, 37)), lambda: torch.randint(0, 37, (3,)),
                  lambda: torch.stack([torch.randperm(37)[:2] for _ in range(4)]), lambda: torch.randperm(4)[:2]]),
    "int_scatters": (lambda x, s, i: (x.scatter_add(0, i, s), x.scatter_reduce(0, i, s * 3, "amax"),
                                      x.to(torch.int8).scatter_add(0, i, s.to(torch.int8))),
                     [lambda: torch.randint(-50, 50, (5, 33), dtype=torch.int32),
                      lambda: torch.randint(-9, 9, (7, 33), dtype=torch.int32), lambda: torch.randint(0, 5, (7, 33))]),
    "half_scatters_bf16": (lambda x, s, i: (x.scatter_add(0, i, s), x.scatter_reduce(0, i, s, "amin") * 2),
                           [R(4, 40, dtype=torch.bfloat16), R(9, 40, dtype=torch.bfloat16),
                            lambda: torch.randint(0, 4, (9, 40))]),
    # -- ops kiln leaves to eager PyTorch (extern steps between the kernels, on the same stream)
    "conv_bn_relu": (lambda x, w, m, v, g, b, w2: torch.sigmoid(F.conv2d(torch.relu(
                         F.batch_norm(F.conv2d(x, w, padding=1), m, v, g, b, False, 0.1, EPS)) + 1, w2)) * 2,
                     [R(2, 3, 9, 9), R(4, 3, 3, 3), R(4), R(4, low=0.5, high=2), R(4), R(4), R(5, 4, 1, 1)]),
    "topk_cummax": (lambda x: (lambda v, i: (v + 1, i * 2, (x * 2).cummax(1).values - 1))(*(x * 3).topk(3, dim=1)),
                    [R(7, 33)]),
    "eager_result_returned": (lambda x: (lambda s: (s, s * 2, x.sum(-1)))(torch.sort(x + 1, -1).values), [R(5, 17)]),
    # -- float16 / bfloat16: each op rounded as eager's half tensors are; softmax, norms and
    #    activations computed in float32 and rounded once (Note [Half composites])
    "half_chain_f16": (lambda x, y: ((torch.tanh(x * 2 + y) * x).exp() - 1, x.float() * 3, (x * 4).to(torch.int32)),
                       [R(33, 65, dtype=torch.float16), R(65, dtype=torch.float16)]),
    "half_rows_f16": (lambda x, w, b: (F.softmax(x, -1), F.layer_norm(x + 3, (96,), w, b), F.gelu(x) * F.silu(x),
                                       x.sum(-1), x.amax(0), x.mean(-1)),
                      [R(17, 96, dtype=torch.float16), R(96, dtype=torch.float16), R(96, dtype=torch.float16)]),
    "half_rows_bf16": (lambda x, w: (F.log_softmax(x * 2, -1), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w,
                                     x.var(-1), x.sum(0), F.group_norm(x.view(3, 4, 32), 2)),
                       [R(12, 32, dtype=torch.bfloat16), R(32, dtype=torch.bfloat16)]),
    "half_topk_bf16": (lambda x: (lambda v, i: (v * 2, i))(*(x + 1).topk(4, dim=-1)), [R(9, 40, dtype=torch.bfloat16)]),
    "half_batch_norm_bf16": (lambda x, m, v, w, b: torch.relu(F.batch_norm(x, m, v, w, b, False, 0.1, EPS)) * 2,
                             [R(2, 6, 5, 3, dtype=torch.bfloat16), R(6, dtype=torch.bfloat16),
                              R(6, dtype=torch.bfloat16, low=0.5, high=2), R(6, dtype=torch.bfloat16),
                              R(6, dtype=torch.bfloat16)]),
    # -- matrix products (cuBLAS steps) with their epilogue kernels
    "linear_gelu": (lambda x, w, b: F.gelu(F.linear(x, w, b)), [R(33, 48), R(40, 48), R(40)]),
    "attention": (lambda q, k, v: F.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v,
                  [R(2, 3, 17, 16), R(2, 3, 17, 16), R(2, 3, 17, 16)]),
    "matmul_broadcast_batch": (lambda a, b: torch.matmul(a, b) + 1, [R(3, 5, 7), R(7, 4, layout="transposed")]),
    "matmul_f64_addmm": (lambda s, a, b: torch.addmm(s, a, b, beta=0.5, alpha=2.0),
                         [R(5, dtype=torch.float64), R(9, 6, dtype=torch.float64), R(6, 5, dtype=torch.float64)]),
    "matmul_empty_k": (lambda a, b: a @ b - 1, [R(4, 0), R(0, 3)]),
    # a row bias the product adds (cuBLASLt's epilogue, Note [Bias in the product]): alone (the
    # kernel goes), under an activation and a residual (the kernel stays), from a slice's offset
    "linear_bias": (lambda x, w, b: F.linear(x, w, b), [R(2, 9, 48), R(40, 48), R(40)]),
    "linear_bias_relu_residual": (lambda x, w, b, r: (torch.relu(x @ w.t() + b[:40]) + r, F.linear(x, w, b[1:])[:, :7]),
                                  [R(33, 48), R(40, 48), R(41), R(33, 40)]),
    # every read of the product in a row kernel takes the bias (the layer norm after a residual)
    "linear_residual_layer_norm": (lambda x, w, b, r: F.layer_norm(F.linear(x, w, b) + r, (40,)),
                                   [R(33, 48), R(40, 48), R(40), R(33, 40)]),
    "half_linear_layer_norm_bf16": (lambda x, w, b, r: F.layer_norm(F.linear(x, w, b) + r, (40,)),
                                    [R(33, 48, dtype=torch.bfloat16), R(40, 48, dtype=torch.bfloat16),
                                     R(40, dtype=torch.bfloat16), R(33, 40, dtype=torch.bfloat16)]),
    # half products: float32 accumulation, the bias added before the one rounding
    "half_linear_bf16": (lambda x, w, b: (F.linear(x, w, b), torch.relu(F.linear(x, w, b)) * 2, x @ w.t(),
                                          (x @ x.transpose(-1, -2)).sum(-1),
                                          F.linear(x[0, :, 1:], w[:, 1:], b)),  # operands 2 bytes off alignment
                         [R(2, 9, 48, dtype=torch.bfloat16), R(40, 48, dtype=torch.bfloat16),
                          R(40, dtype=torch.bfloat16)]),
    "half_attention_f16": (lambda q, k, v, w, b: F.linear(F.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v, w, b),
                           [R(2, 3, 17, 16, dtype=torch.float16), R(2, 3, 17, 16, dtype=torch.float16),
                            R(2, 3, 17, 16, dtype=torch.float16), R(24, 16, dtype=torch.float16),
                            R(24, dtype=torch.float16)]),
    # heads of a fused qkv projection: batch dims (B, H) that no single stride spans
    "attention_fused_qkv": (lambda x, w: (lambda qkv: F.softmax(qkv[0] @ qkv[1].transpose(-2, -1), -1) @ qkv[2])(
        (x @ w).view(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)), [R(2, 17, 32), R(32, 96)]),
}


PRODUCT_ONLY = {"linear_bias"}  # one cuBLASLt step, no kernel


@needs_nvrtc
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_kernel_compiles_to_ptx(name):
    fn, makers = CASES[name]
    args = [m() for m in makers]
    kernels = kiln.codegen(fn, *args, target="cuda")
    assert kernels or name in PRODUCT_ONLY, f"{name}: no kernels"
    for k in kernels:
        assert k.target == "cuda"
        assert "__global__" in k.source and f" {k.name}(" in k.source, k.source
        assert "// provenance:" in k.source
        assert k.asm and ".entry" in k.asm and k.name in k.asm, f"{name}: {k.name} has no PTX entry"
        assert k.block % 32 == 0 and k.block <= 1024


@needs_nvrtc
def test_kernel_source_is_readable():
    """Named after the fused ops, typed restrict pointers, a grid-stride loop, 16-byte accesses."""
    (k,) = kiln.codegen(lambda x, y: torch.tanh(x * 2 + y), torch.randn(1024), torch.randn(1024), target="cuda")
    assert k.name.startswith("k0_") and "tanh" in k.name
    assert 'extern "C" __global__' in k.source
    assert "const float* __restrict__ buf0" in k.source and "int* __restrict__ status" in k.source
    assert "gridDim.x" in k.source and "kiln_vload<4>" in k.source and "tanhf(" in k.source


@needs_nvrtc
def test_row_kernels_use_block_reductions():
    (k,) = kiln.codegen(lambda x: F.softmax(x, -1), torch.randn(8, 1000), target="cuda")
    assert k.row and "kiln_block_reduce" in k.source and "__shfl_down_sync" in k.source
    assert k.source.count("kiln_block_reduce(") == 3  # the helper, the max and the sum
    assert "c0[it]" in k.source  # the row is read once and kept in registers
    body = k.source[k.source.index("__global__"):]
    assert body.count("expf(") == 1 and "c1[it] = " in body  # exp(x - max) computed once, for the sum and the store


@needs_nvrtc
def test_integer_division_reports_status():
    (k,) = kiln.codegen(lambda a, b: a // b, R(9, dtype=torch.int32)(), R(9, dtype=torch.int32, nonzero=True)(),
                        target="cuda")
    assert k.may_fail and "kiln_floordiv<int>" in k.source and "*status = 1" in k.source


@needs_nvrtc
def test_codegen_explicit_arch_and_cache():
    fn = lambda x: x.exp() + 1  # noqa: E731
    a = kiln.codegen(fn, torch.randn(5), target="cuda", arch=80)
    assert ".target sm_80" in a[0].asm
    b = kiln.codegen(fn, torch.randn(5), target="cuda", arch=80)
    assert b[0].source == a[0].source and b[0].asm == a[0].asm


@needs_nvrtc
def test_capture_failure_is_reported():
    def f(x):
        return x * float(x.sum())  # data-dependent: a graph break
    with pytest.raises(kiln.Unsupported, match="graph break|cannot be captured"):
        kiln.codegen(f, torch.randn(4), target="cuda")


def test_no_gpu_is_reported_cleanly():
    status = _cuda.cuda_status()
    assert set(status) >= {"backend", "nvrtc", "driver", "reason"}
    if not torch.cuda.is_available() and _cuda.HAVE_CUDA_BACKEND:
        assert status["driver"] is False and status["reason"]


# ---- (b) on a GPU ------------------------------------------------------------------------------


def _with_specials(t, gen):
    """A copy of a contiguous float tensor with inf, -inf and NaN at random places."""
    if not t.dtype.is_floating_point or t.numel() < 4 or not t.is_contiguous():
        return t
    t = t.clone()
    flat = t.view(-1)
    idx = torch.randint(0, flat.numel(), (3,), generator=gen)
    flat[idx[0]], flat[idx[1]], flat[idx[2]] = float("inf"), float("-inf"), float("nan")
    return t


def _to_cuda(t):
    """The same values and the same strides (a view's layout) on the GPU."""
    if t.is_contiguous():
        return t.cuda()
    base = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")
    return base.copy_(t)


def _poisoned_run(fn, args):
    """Compiles fn for the GPU on `args` and runs the compiled program with outputs pre-filled
    with garbage; returns (compiled outputs, eager outputs)."""
    tracer = _cuda.trace_graph(fn, tuple(args))
    want = fn(*args)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    runner = _cuda.compile_cuda_entry(tracer)
    runner.poison_outputs = True
    got = runner(tracer.leaves)
    assert got is not False, "a kernel flagged an integer division by zero"
    torch.cuda.synchronize()
    return got, want


GPU_CASES = ["unary_f32", "unary_log_f32", "unary_f64", "activations", "binary_f32", "compare_logical", "broadcast",
             "views", "transposed_input", "int_ops", "int64_ops", "uint8_bool", "casts", "float64_mix", "sum_mean",
             "amax_amin", "argmax_argmin", "prod_any_all", "int_reductions", "var_std", "logsumexp_norm",
             "whole_tensor_sum", "reduce_middle_dim", "long_rows", "extent_one_reduce", "softmax", "softmax_dim0",
             "log_softmax", "layer_norm", "rms_norm", "group_norm", "batch_norm_eval", "bias_relu_residual",
             "scalars_consts", "small_ints", "empty_reduce", "linear_gelu", "attention", "matmul_broadcast_batch",
             "matmul_f64_addmm", "matmul_empty_k", "attention_fused_qkv", "index_copy", "pooling", "conv_bn_relu",
             "topk_cummax", "eager_result_returned", "cumsum_scatter_add", "half_chain_f16", "half_rows_f16",
             "half_rows_bf16", "half_topk_bf16", "half_batch_norm_bf16", "linear_bias", "linear_bias_relu_residual",
             "half_linear_bf16", "half_attention_f16", "linear_residual_layer_norm", "half_linear_layer_norm_bf16",
             "scans", "half_scans_bf16", "scatters", "int_scatters", "half_scatters_bf16"]

# Reductions whose eager CUDA result depends on summation order more than the default allows.
_RTOL = {"whole_tensor_sum": 1e-4, "var_std": 1e-4, "logsumexp_norm": 1e-4, "long_rows": 1e-4, "group_norm": 1e-4,
         "layer_norm": 1e-4, "rms_norm": 1e-4, "linear_gelu": 1e-4, "attention": 1e-4, "matmul_broadcast_batch": 1e-4,
         "attention_fused_qkv": 1e-4, "conv_bn_relu": 1e-4,
         # one half ulp: exp/tanh/erf differ from eager's in their last float32 bits now and then,
         # and a float32 difference can round to the neighbouring half
         "half_chain_f16": 2e-3, "half_rows_f16": 2e-3, "half_rows_bf16": 1.6e-2, "half_topk_bf16": 1.6e-2,
         "half_batch_norm_bf16": 1.6e-2,
         # products: float32 sums in another order than eager's (then rounded to the half type)
         "linear_bias": 1e-4, "linear_bias_relu_residual": 1e-4, "half_linear_bf16": 1.6e-2,
         "half_attention_f16": 2e-3, "linear_residual_layer_norm": 1e-4, "half_linear_layer_norm_bf16": 1.6e-2,
         # running sums in another order than eager's (kiln's in float64 for float32)
         "scans": 1e-4, "half_scans_bf16": 1.6e-2,
         # atomic updates in the hardware's order: float sums round differently from eager's
         "scatters": 1e-5, "half_scatters_bf16": 1.6e-2}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", GPU_CASES)
@pytest.mark.parametrize("specials", [False, True], ids=["finite", "inf_nan"])
def test_gpu_matches_eager(name, specials):
    fn, makers = CASES[name]
    gen = torch.Generator().manual_seed(7)
    args = [m() for m in makers]
    if specials:
        args = [_with_specials(a, gen) for a in args]
    args = [_to_cuda(a) for a in args]
    got, want = _poisoned_run(fn, args)
    rtol = _RTOL.get(name)
    assert_same(got, want, rtol=rtol, atol=rtol, what=name)


ODD_SHAPES = [(1,), (7,), (1023,), (4097,), (3, 5), (1, 1000), (257, 33), (2, 3, 4, 5), (8191, 3)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_odd_sizes(shape):
    x = torch.randn(shape, device="cuda")
    y = torch.randn(shape[-1:], device="cuda")

    def fn(x, y):
        return torch.sigmoid(x) * y + 1, F.softmax(x, -1), x.sum(-1), x.amax(-1), x.argmax(-1), x.mean()

    got, want = _poisoned_run(fn, [x, y])
    assert_same(got, want, rtol=1e-4, atol=1e-4, what=str(shape))


@pytest.mark.gpu
@needs_gpu
def test_gpu_misaligned_views():
    """A storage offset breaks 16-byte alignment: the kernel must take its scalar path."""
    base = torch.randn(4099, device="cuda")
    x, y = base[1:4097], base[3:4099]
    got, want = _poisoned_run(lambda a, b: a * b + 2, [x, y])
    assert_same(got, want)


@pytest.mark.gpu
@needs_gpu
def test_gpu_integer_division_by_zero_flags_status():
    a = torch.arange(8, dtype=torch.int32, device="cuda")
    b = torch.ones(8, dtype=torch.int32, device="cuda")
    tracer = _cuda.trace_graph(lambda p, q: p // q, (a, b))
    runner = _cuda.compile_cuda_entry(tracer)
    assert runner([a, b]) is not False
    b[3] = 0
    assert runner([a, b]) is False


@pytest.mark.gpu
@needs_gpu
def test_gpu_through_kiln_compile():
    """kiln.compile on CUDA tensors runs the CUDA kernels (once _compile.py routes CUDA captures)."""
    fn = lambda x, w, b: F.layer_norm(x, (256,), w, b, EPS) * 2  # noqa: E731
    x, w, b = torch.randn(64, 256, device="cuda"), torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
    f = kiln.compile(fn)
    f(x, w, b)
    out = f(x, w, b)
    ks = kiln.kernels(f)
    if not ks or getattr(ks[0], "target", "cpu") != "cuda":
        pytest.skip("kiln.compile does not route CUDA captures to the CUDA backend yet")
    assert_same(out, fn(x, w, b), rtol=1e-4, atol=1e-4)
    assert kiln.counters()["cache_hits"] >= 1


# ---- (a') the kernels' semantics, emulated on the CPU ---------------------------------------------
# The generated CUDA is compiled by the host compiler against a shim of the CUDA built-ins (see
# cuda_emulation.py): threads, barriers, shuffles and grid-stride loops all run for real.

EMULATED = sorted(set(CASES) - {"long_rows"})  # 9000-wide rows: slow under thread emulation


def _host_compiler():
    import shutil
    return shutil.which("g++")


needs_emulation = pytest.mark.skipif(NVRTC_SKIP is not None or _host_compiler() is None,
                                     reason=NVRTC_SKIP or "no host C++ compiler (g++) for the CUDA emulation")


def _emulated_run(fn, args):
    """Runs fn's CUDA program on the CPU emulation (cuda_emulation.py); returns (emulated
    outputs, eager outputs)."""
    from cuda_emulation import emulate
    want = fn(*args)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    got, ok = emulate(fn, *args)
    assert ok, "a kernel flagged an integer division by zero"
    return got, want


@needs_emulation
@pytest.mark.parametrize("name", EMULATED)
def test_emulated_kernels_match_eager(name):
    fn, makers = CASES[name]
    got, want = _emulated_run(fn, [m() for m in makers])
    rtol = _RTOL.get(name)
    assert_same(got, want, rtol=rtol or 2e-5, atol=rtol or 2e-5, what=name)


@needs_emulation
def test_emulated_inf_nan_and_odd_sizes():
    from cuda_emulation import emulate

    def fn(x, y):
        return (torch.sigmoid(x) * y + 1, F.softmax(x, -1), x.sum(-1), x.amax(-1), x.argmax(-1), x.amin(-1),
                torch.maximum(x, y), x.mean())

    gen = torch.Generator().manual_seed(3)
    for shape in [(1,), (7,), (3, 5), (2, 1000), (37, 33), (5, 2049)]:
        x = _with_specials(torch.randn(shape), gen)
        y = _with_specials(torch.randn(shape[-1:]), gen)
        got, ok = emulate(fn, x, y)
        assert ok
        assert_same(got, list(fn(x, y)), rtol=1e-5, atol=1e-5, what=str(shape))


@needs_emulation
def test_emulated_vector_path_with_misaligned_views():
    from cuda_emulation import emulate
    for dtype in (torch.float32, torch.bfloat16):  # 4 or 8 elements per 16-byte access
        base = torch.randn(4099).to(dtype)
        for x, y in [(base[:4096], base[1:4097]), (base[3:4099], base[:4096]), (base[:4096], base[:4096]),
                     (base[8:4096], base[:4088])]:
            got, ok = emulate(lambda a, b: a * b + 2, x, y)
            assert_same(got, [x * y + 2], what=str(dtype))


@needs_emulation
def test_emulated_integer_division_by_zero_sets_status():
    from cuda_emulation import emulate
    a = torch.arange(-4, 4, dtype=torch.int32)
    b = torch.tensor([1, 2, -3, 0, 5, -1, 7, 3], dtype=torch.int32)
    with pytest.raises(RuntimeError):
        a // b  # eager raises: the compiled kernels must say so instead of trapping
    # trace on divisors without a zero, run on the one with it
    from kiln import _C as C
    nz = b.clone()
    nz[3] = 1
    tracer = _cuda.trace_graph(lambda p, q: (p // q, p % q), (a, nz), {})
    from cuda_emulation import _compile
    prog = C.CudaProgram(tracer.builder, 0, 90)
    assert prog.may_fail
    lib, fns = _compile([k["source"] for k in prog.kernels()], [k["name"] for k in prog.kernels()])
    import ctypes
    outs = [torch.empty(8, dtype=torch.int32) for _ in range(2)]
    status = torch.zeros(1, dtype=torch.int32)
    bufs = [a, b] + outs
    for k, f in zip(prog.kernels(), fns):
        ptrs = [bufs[i].data_ptr() for i in k["params"]] + [status.data_ptr()]
        lib.kiln_emulate(f, (ctypes.c_void_p * len(ptrs))(*ptrs), len(ptrs), k["grid"], k["block"])
    assert int(status.item()) == 1
    keep = [0, 1, 2, 4, 5, 6, 7]
    assert torch.equal(outs[0][keep], (a // nz)[keep]) and torch.equal(outs[1][keep], (a % nz)[keep])


# ---- extern steps: the ops kiln leaves to eager PyTorch inside a CUDA program ------------------


@needs_nvrtc
def test_extern_steps_bind_results_and_report_failures():
    """ExternSteps (the CUDA runner's, shared with the emulation) passes a temporary's flat
    storage as the shaped operand, copies a result into the recorded layout, and turns a raising
    op or a result of another shape into a failure with its reason."""
    x = torch.randn(5, 17)
    tracer = _cuda.trace_graph(lambda x: torch.sort(x + 1, -1).values * 2, (x,))
    prog = _C.CudaProgram(tracer.builder, 0, 90)
    (e,) = prog.externs()
    assert e["table_index"] == 0 and len(e["outputs"]) == 1
    bufs = [_cuda._Buffer(b) for b in prog.buffers()]
    (src,), out = e["inputs"], e["outputs"][0]

    def run(fallback):
        steps = _cuda.ExternSteps(prog.externs(), bufs, [fallback])
        tensors = [None] * len(bufs)
        tensors[src] = (x + 1).reshape(-1).clone()  # a temporary: flat storage
        return steps, steps.run(0, tensors), tensors

    steps, got, tensors = run(tracer.fallbacks[0])
    want = torch.sort(x + 1, -1).values
    assert got is not None and torch.equal(tensors[out], want) and got[0] is tensors[out]

    def transposed(t):
        v = torch.sort(t, -1).values
        return v.t().contiguous().t()  # same values, column-major
    steps, got, tensors = run(transposed)
    assert got is not None and torch.equal(tensors[out], want) and tensors[out].stride() == bufs[out].strides

    steps, got, _ = run(lambda t: torch.sort(t, -1).values[:2])
    assert got is None and steps.data_dependent and "data-dependent" in steps.failure

    def raising(t):
        raise RuntimeError("boom")
    steps, got, _ = run(raising)
    assert got is None and not steps.data_dependent and "raised (boom)" in steps.failure


@pytest.mark.gpu
@needs_gpu
def test_gpu_eager_ops_run_inside_compiled_programs():
    """A convolution block (eager cuDNN convolutions, kiln kernels between them), topk and a
    cumsum compile for the GPU instead of making the whole function eager."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 8, 1)).cuda().eval()
    with torch.no_grad():
        conv[1].running_mean.uniform_(-1, 1)
        conv[1].running_var.uniform_(0.5, 2)

    def block(x):
        return torch.sigmoid(conv(x) + x) * 2

    def routing(x):
        v, i = (x * 3).topk(2, dim=-1)
        return F.softmax(v, -1), i, (x * 2).cumsum(-1) + 1

    for fn, x in [(block, torch.randn(4, 8, 17, 17, device="cuda")), (routing, torch.randn(64, 33, device="cuda"))]:
        kiln.reset()
        f = kiln.compile(fn)
        with torch.no_grad():
            f(x)
            got = f(x)
            want = fn(x)
        c = kiln.counters()
        assert c["eager_calls"] == 0 and c["cache_hits"] >= 1 and c["fallback_ops"] >= 1, c
        assert getattr(kiln.kernels(f)[0], "target", "cpu") == "cuda"
        assert_same(got, want, rtol=1e-4, atol=1e-4, what=fn.__name__)


# ---- column kernels (Note [CUDA column kernels]) ---------------------------------------------

COLUMN_CASES = {
    # name: (fn, inputs); each has a reduction whose contiguous dim is kept
    "sum0_tail": (lambda x: (x.sum(0), x.amax(0) * 2), [R(37, 61)]),           # 61 columns: a ragged last tile
    "long_columns": (lambda x: x.mean(0) + 1, [R(2500, 24)]),                 # > 8 elements per lane: a loop
    "softmax_dim0": (lambda x: F.softmax(x, 0), [R(50, 40)]),                 # three phases, stores per element
    "var_argmax0": (lambda x: (x.var(0), x.argmax(0), x.argmin(0)), [R(33, 16)]),
    "nhwc_mean": (lambda x: x.mean((2, 3)),
                  [lambda: make_input((2, 24, 5, 7), torch.float32).contiguous(memory_format=torch.channels_last)]),
    "middle_dim": (lambda x: x.sum(1) * 3, [R(3, 29, 40)]),
    "half_sum0": (lambda x: (x.sum(0), x.float().mean(0)), [R(45, 48, dtype=torch.float16)]),
    "f64_bool_int": (lambda x, m, i: (x.sum(0), m.all(0), i.amax(0), i.sum(0)),
                     [R(19, 12, dtype=torch.float64), R(19, 40, dtype=torch.bool), R(19, 32, dtype=torch.int32)]),
}


@needs_emulation
@pytest.mark.parametrize("name", sorted(COLUMN_CASES))
def test_emulated_column_kernels_match_eager(name):
    fn, makers = COLUMN_CASES[name]
    gen = torch.Generator().manual_seed(11)
    args = [_with_specials(m(), gen) if name != "var_argmax0" else m() for m in makers]
    kernels = kiln.codegen(fn, *args, target="cuda")
    assert any(k.columns > 0 and "kiln_column_reduce<" in k.source for k in kernels), name
    got, want = _emulated_run(fn, args)
    tol = 2e-3 if name == "half_sum0" else 2e-5
    assert_same(got, want, rtol=tol, atol=tol, what=name)


@needs_nvrtc
def test_contiguous_rows_keep_the_row_form():
    """A reduction along the contiguous dim is read best by a block per row."""
    (k,) = kiln.codegen(lambda x: x.sum(-1), torch.randn(64, 256), target="cuda")
    assert k.row and k.columns == 0


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", sorted(COLUMN_CASES))
def test_gpu_column_kernels_match_eager(name):
    fn, makers = COLUMN_CASES[name]
    args = [_to_cuda(m()) for m in makers]
    got, want = _poisoned_run(fn, args)
    tol = 2e-3 if name == "half_sum0" else 1e-4
    assert_same(got, want, rtol=tol, atol=tol, what=name)


@needs_emulation
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_half_ops_round_as_eager(dtype):
    """Each half op computes in float32 and rounds once (a remainder is one rounding, not one per
    expression it lowers to); fmod, remainder, pow and comparisons take a Python number in the
    half type, as eager does; mul and div keep it exact. Bit for bit against eager."""
    from cuda_emulation import emulate
    x = (torch.randn(2000, generator=torch.Generator().manual_seed(5)) * 3).to(dtype)

    def fn(x):
        return (torch.fmod(x, -0.1), torch.remainder(x, 0.3), x > 0.1, x <= -0.7, x.abs() ** 0.7, x * 0.1,
                x / 0.3, torch.floor_divide(x, 0.7), torch.where(x > 0, x, x * 0.2) * 3,
                torch.div(x * 7, x.flip(0) + 0.5, rounding_mode="trunc"),  # the quotient rounds before trunc
                torch.div(x, 1e-3, rounding_mode="trunc"))  # by a number: divided in float32, not rounded

    got, ok = emulate(fn, x)
    assert ok
    for i, (g, w) in enumerate(zip(got, fn(x))):
        g = g.view(w.shape)
        assert torch.equal(g.nan_to_num(), w.nan_to_num()) and torch.equal(g.isnan(), w.isnan()), \
            f"output {i}: {(g != w).sum()} elements differ"


@needs_emulation
def test_emulated_half_layer_norm_of_a_huge_row_is_exact():
    """A bfloat16 layer norm accumulates its moments in float64, as float32's: a row holding
    1e30 normalises to what float64 gives (eager's float32 accumulators overflow there and
    return zeros); the other rows match eager."""
    from cuda_emulation import emulate
    x = torch.randn(6, 33).bfloat16()
    x[2, 7] = 1e30
    fn = lambda t: F.layer_norm(t, (33,), eps=1e-3)  # noqa: E731
    (got,), ok = emulate(fn, x)
    got, want, exact = got.view(6, 33), fn(x), fn(x.double())
    assert ok
    assert_same(got[2], exact[2].bfloat16(), rtol=1.6e-2, atol=1e-2)
    keep = [0, 1, 3, 4, 5]
    assert_same(got[keep], want[keep], rtol=1.6e-2, atol=1e-2)


def _steps(fn, *args):
    tracer = _cuda.trace_graph(fn, args)
    prog = _C.CudaProgram(tracer.builder, 0, 90)
    return prog.steps(), prog.buffers()


@needs_nvrtc
def test_bias_goes_into_the_product():
    """Note [Bias in the product]: a linear layer is one product step that adds its bias and
    writes the output (no kernel); under an activation, a layer norm, or read by two kernels or
    an eager op, the product adds the bias and the kernels read it; a product whose plain value
    is also returned, a column bias, or a float64 product keeps its bias kernel."""
    x, w, b = torch.randn(9, 48), torch.randn(40, 48), torch.randn(40)
    steps, bufs = _steps(lambda x, w, b: F.linear(x, w, b), x, w, b)
    assert [k for k, _ in steps] == ["gemm"]
    gemm = steps[0][1]
    assert gemm["bias"] == (2, 0) and bufs[gemm["out"]]["kind"] == "output"
    steps, _ = _steps(lambda x, w, b: F.linear(x, w, b[3:43]), x, w, torch.randn(50))
    assert [k for k, _ in steps] == ["gemm"] and steps[0][1]["bias"][1] == 3
    steps, _ = _steps(lambda x, w, b: torch.relu(F.linear(x, w, b)), x, w, b)
    assert [k for k, _ in steps] == ["gemm", "kernel"] and steps[0][1]["bias"] is not None
    steps, _ = _steps(lambda x, w, b: F.layer_norm(F.linear(x, w, b), (40,)), x, w, b)  # a row kernel
    assert [k for k, _ in steps] == ["gemm", "kernel"] and steps[0][1]["bias"] is not None
    # two kernels read the sum (each adds the bias: both read the product instead); an eager op
    steps, _ = _steps(lambda x, w, b: (lambda y: (y.sum(-1), y.t() * 3))(F.linear(x, w, b)), x, w, b)
    assert [k for k, _ in steps] == ["gemm", "kernel", "kernel"] and steps[0][1]["bias"] is not None
    steps, _ = _steps(lambda x, w, b: F.linear(x, w, b).topk(3).values, x, w, b)
    assert [k for k, _ in steps] == ["gemm", "extern"] and steps[0][1]["bias"] is not None
    steps, _ = _steps(lambda x, w, b: (lambda y: (y, y + b))(x @ w.t()), x, w, b)
    assert [k for k, _ in steps] == ["gemm", "kernel"] and steps[0][1]["bias"] is None
    steps, _ = _steps(lambda x, w, b: x @ w.t() + b.view(40, 1)[:9], x, torch.randn(9, 48), b)  # a column bias
    assert steps[0][1]["bias"] is None
    steps, _ = _steps(lambda x, w, b: F.linear(x, w, b), x.double(), w.double(), b.double())  # cuBLAS: no epilogue
    assert steps[0][1]["bias"] is None
    saved = kiln.config.get("cuda_bias_epilogue")
    kiln.config.set("cuda_bias_epilogue", 0)  # the knob: the kernel adds it
    try:
        steps, _ = _steps(lambda x, w, b: F.linear(x, w, b), x, w, b)
    finally:
        kiln.config.set("cuda_bias_epilogue", saved)
    assert [k for k, _ in steps] == ["gemm", "kernel"] and steps[0][1]["bias"] is None


@needs_nvrtc
def test_half_products_run_on_cublaslt_only_where_they_round_once():
    """A half product is a kiln step; a half addmm too when its bias is a row the product adds
    (one rounding, as eager's); with alpha or beta, a matrix bias, or one row (outside
    cuBLASLt's epilogue's bounds), it stays eager's op."""
    x, w, b = (torch.randn(9, 48).bfloat16(), torch.randn(48, 40).bfloat16(), torch.randn(40).bfloat16())
    steps, _ = _steps(lambda x, w, b: torch.addmm(b, x, w), x, w, b)
    assert [k for k, _ in steps] == ["gemm"] and steps[0][1]["bias"] is not None
    for fn in (lambda x, w, b: torch.addmm(b, x, w, alpha=0.5), lambda x, w, b: torch.addmm(b, x, w, beta=2),
               lambda x, w, b: torch.addmm(b.expand(9, 40), x, w), lambda x, w, b: torch.addmm(b, x[:1], w)):
        steps, _ = _steps(fn, x, w, b)
        assert [k for k, _ in steps] == ["extern"]


_EPILOGUES = [lambda y, r: y, lambda y, r: torch.relu(y), lambda y, r: F.gelu(y) + r, lambda y, r: (y + r) * 2,
              lambda y, r: F.layer_norm(y + r, y.shape[-1:]), lambda y, r: F.softmax(y, -1),
              lambda y, r: (y.sum(-1), y * 3), lambda y, r: y.transpose(0, 1) + 1,
              lambda y, r: y.unsqueeze(-2) * r.unsqueeze(-1)[..., :1, :1], lambda y, r: (y[1:] * 2, F.silu(y))]


@needs_emulation
@pytest.mark.parametrize("seed", range(24))
def test_emulated_random_linear_layers_match_eager(seed):
    """Random linear layers (sizes, a batch of inputs, a bias sliced from a longer vector, a
    weight stored either way) under random epilogues, float32 and half: wherever Note [Bias in
    the product] folds the bias and wherever it does not, the values are eager's."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda n: int(torch.randint(0, n, (1,), generator=g))  # noqa: E731
    dtype = [torch.float32, torch.bfloat16, torch.float16][pick(3)]
    m, k, n = 2 + pick(40), 2 + pick(40), 2 + pick(40)
    x = torch.randn(*((2, m) if pick(2) else (m,)), k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype) if pick(2) else torch.randn(k, n, generator=g).to(dtype).t()
    start = pick(3)
    b = torch.randn(n + start + pick(3), generator=g).to(dtype)
    r = torch.randn(*x.shape[:-1], n, generator=g).to(dtype)
    epilogue = _EPILOGUES[pick(len(_EPILOGUES))]

    def fn(x, w, b, r):
        return epilogue(F.linear(x, w, b[start:start + n]), r)

    got, want = _emulated_run(fn, [x, w, b, r])
    tol = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    assert_same(got, want, rtol=tol, atol=tol, what=f"seed {seed}: {dtype} m={m} k={k} n={n}")


@needs_emulation
def test_emulated_scatter_out_of_range_index_sets_status():
    """An index out of range flags the status word (eager then redoes the call and raises
    torch's error); the atomic update goes to element 0 instead of outside the buffer."""
    from cuda_emulation import emulate
    x, s = torch.randn(4, 5), torch.randn(3, 5)
    i = torch.randint(0, 4, (3, 5))
    bad = i.clone()
    bad[1, 2] = 4
    with pytest.raises(RuntimeError):
        x.scatter_add(0, bad, s)
    fn = lambda x, s, i: x.scatter_add(0, i, s) * 2  # noqa: E731
    _, ok = emulate(fn, x, s, i, run_args=(x, s, bad))
    assert not ok
    got, ok = emulate(fn, x, s, i)
    assert ok
    assert_same(got, [fn(x, s, i)], rtol=1e-6, atol=1e-6)


def test_temporaries_share_one_allocation_without_overlap():
    """BufferLayout (the CUDA runner's, and the emulation's): the temporaries are 256-byte
    aligned, disjoint views of one block; inputs are the arguments; skipped buffers get None."""
    def buf(kind, dtype, n, index=-1):
        return _cuda._Buffer({"kind": kind, "index": index, "dtype": {torch.float32: "float32",
                              torch.bfloat16: "bfloat16", torch.bool: "bool"}[dtype], "sizes": [n],
                              "strides": [1], "storage_numel": n})
    x = torch.randn(5)
    bufs = [buf("input", torch.float32, 5, 0), buf("temp", torch.float32, 7), buf("temp", torch.bfloat16, 3),
            buf("output", torch.float32, 4, 0), buf("temp", torch.bool, 300), buf("temp", torch.float32, 0),
            buf("extern", torch.float32, 9)]
    got = _cuda.BufferLayout(bufs, skip={6}).allocate([x], "cpu", poison_temps=True)
    assert got[0] is x and got[6] is None and got[3].shape == (4,)
    temps = [got[i] for i in (1, 2, 4)]
    base = temps[0].data_ptr()
    spans = sorted((t.data_ptr() - base, t.data_ptr() - base + t.numel() * t.element_size()) for t in temps)
    assert all((start % 256) == 0 for start, _ in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert [t.dtype for t in temps] == [torch.float32, torch.bfloat16, torch.bool] and got[5].numel() == 0
    assert torch.isnan(temps[0]).all()  # poisoned
