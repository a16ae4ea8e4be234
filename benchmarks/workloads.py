"""Benchmark workloads: plain PyTorch functions, their inputs, and the bytes they must move.

To add a workload, append one Workload(name, fn, make_inputs, bytes_moved) to the list built
by `large_set` / `small_set` (or write your own list and pass it to harness.run_workloads):

  name         unique; put the shape in it, e.g. "gelu_tanh[16M]"
  fn           the function as a user would write it in PyTorch (no kiln/inductor specifics)
  make_inputs  gen -> tuple of input tensors (use `gen`, a seeded torch.Generator)
  bytes_moved  the fewest bytes any implementation must move: every input read once plus
               every output written once (use f32(shape, shape, ...) to add them up)
  group        "large" (memory-bound sizes) or "small" (per-call overhead); set by the
               set builders below
"""

from collections import namedtuple
import math

import torch
import torch.nn.functional as F

Workload = namedtuple("Workload", "name fn make_inputs bytes_moved group", defaults=("large",))

EPS = 1e-5


def f32(*shapes):
    """Bytes of float32 tensors of the given shapes, added up."""
    return sum(4 * math.prod(s) for s in shapes)


def randn(*shape):
    return lambda gen: torch.randn(*shape, generator=gen, dtype=torch.float32)


def inputs(*makers):
    return lambda gen: tuple(m(gen) for m in makers)


# ---------------------------------------------------------------------------------------------
# The functions, written the way a user writes them.

def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def bias_relu_residual(x, b, r):
    return torch.relu(x + b) + r


def layer_norm_manual(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * w + b


def layer_norm_torch(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def softmax_manual(x):
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def softmax_torch(x):
    return F.softmax(x, -1)


def rms_norm_manual(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def silu_gate(a, b):
    return F.silu(a) * b


def pointwise_chain10(x, y):
    # 10 pointwise ops: mul, add, sigmoid, mul, sub, abs, sqrt, neg, exp, mul
    t = x * 1.5 + y
    t = torch.sigmoid(t) * x
    t = torch.sqrt(torch.abs(t - 0.5))
    return torch.exp(-t) * y


# ---------------------------------------------------------------------------------------------
# The sets.

def _fmt_n(n):
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % 1024 == 0 and n >= 1 << 14:
        return f"{n >> 10}K"
    return str(n)


def build_set(n1d, rows, cols, group):
    """All workloads at one size: 1-D ones on n1d floats, row-wise ones on rows x cols.
    bias_relu_residual and silu_gate use 2-D shapes with n1d and 2*rows*cols elements."""
    tag1 = _fmt_n(n1d)
    tag2 = f"{rows}x{cols}"
    # bias-relu-residual: square-ish 2-D view of n1d elements, bias broadcast over rows
    br_rows = int(math.isqrt(n1d))
    br_cols = n1d // br_rows
    sg_cols = 2 * cols if group == "large" else cols   # 8192x2048 large, 64x64 small
    tag_br = f"{br_rows}x{br_cols}"
    tag_sg = f"{rows}x{sg_cols}"
    W = lambda *a: Workload(*a, group=group)  # noqa: E731
    return [
        W(f"gelu_tanh[{tag1}]", gelu_tanh,
          inputs(randn(n1d)), f32((n1d,), (n1d,))),
        W(f"bias_relu_res[{tag_br}]", bias_relu_residual,
          inputs(randn(br_rows, br_cols), randn(br_cols), randn(br_rows, br_cols)),
          f32((br_rows, br_cols), (br_cols,), (br_rows, br_cols), (br_rows, br_cols))),
        W(f"layernorm_manual[{tag2}]", layer_norm_manual,
          inputs(randn(rows, cols), randn(cols), randn(cols)),
          f32((rows, cols), (cols,), (cols,), (rows, cols))),
        W(f"layernorm_F[{tag2}]", layer_norm_torch,
          inputs(randn(rows, cols), randn(cols), randn(cols)),
          f32((rows, cols), (cols,), (cols,), (rows, cols))),
        W(f"softmax_manual[{tag2}]", softmax_manual,
          inputs(randn(rows, cols)), f32((rows, cols), (rows, cols))),
        W(f"softmax_F[{tag2}]", softmax_torch,
          inputs(randn(rows, cols)), f32((rows, cols), (rows, cols))),
        W(f"rmsnorm_manual[{tag2}]", rms_norm_manual,
          inputs(randn(rows, cols), randn(cols)),
          f32((rows, cols), (cols,), (rows, cols))),
        W(f"silu_gate[{tag_sg}]", silu_gate,
          inputs(randn(rows, sg_cols), randn(rows, sg_cols)),
          f32((rows, sg_cols), (rows, sg_cols), (rows, sg_cols))),
        W(f"chain10[{tag1}]", pointwise_chain10,
          inputs(randn(n1d), randn(n1d)), f32((n1d,), (n1d,), (n1d,))),
    ]


def large_set(reduced=False):
    """Memory-bound sizes: 16M floats (1-D), 4096x4096 bias-relu, 8192x1024 row-wise,
    8192x2048 SiLU gate. reduced=True divides every size by 16 (used by --quick)."""
    if reduced:
        return build_set(1 << 20, 1024, 1024, "large")
    return build_set(16 << 20, 8192, 1024, "large")


def small_set():
    """Per-call overhead sizes: 4096 floats (1-D), 64x64 (2-D)."""
    return build_set(4096, 64, 64, "small")


def all_workloads(quick=False):
    return large_set(reduced=quick) + small_set()
