"""Matrix products lowered to kiln's BLAS steps (mm, bmm, addmm, baddbmm and what matmul,
linear, einsum and hand-written attention reach at the ATen level), against eager on random
inputs: ranks, broadcast batches, transposed / sliced / expanded operands, size-1 and empty
dims, float64, edge values, bias semantics (beta = 0 ignores nan), and the fallbacks that
remain (integer dtypes, KILN_MATMUL=eager)."""

import math

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing import assert_same, check, make_input

pytestmark = pytest.mark.skipif(not kiln._C.blas_library(), reason="no BLAS could be opened")


def gemm_steps(f):
    """BLAS steps of every compiled variant of f (from the printed program)."""
    return sum(len(p.gemms) for p in kiln._kernels._compiled_of(f).compiled_programs())


def no_fallbacks(f):
    c = kiln.counters()
    assert c["fallback_ops"] == 0 and c["eager_calls"] == 0, c


@pytest.mark.parametrize("shapes", [
    ((7, 5), (5, 3)), ((1, 5), (5, 9)), ((6, 1), (1, 4)), ((33, 17), (17, 1)), ((64, 128), (128, 96)),
])
def test_mm_shapes(shapes):
    a, b = (make_input(s) for s in shapes)
    f = check(lambda x, y: torch.mm(x, y), (a, b))
    assert gemm_steps(f) >= 1
    no_fallbacks(f)


@pytest.mark.parametrize("la,lb", [("contiguous", "transposed"), ("transposed", "contiguous"),
                                   ("transposed", "transposed"), ("sliced", "contiguous"),
                                   ("contiguous", "sliced"), ("broadcast", "contiguous")])
def test_operand_layouts_reach_blas_as_is_or_packed(la, lb):
    # transposed operands go to BLAS as a transpose flag; sliced (step 2) and broadcast rows
    # (stride 0) are packed by the runtime: every layout gives eager's values
    a, b = make_input((9, 12), layout=la), make_input((12, 10), layout=lb)
    f = check(lambda x, y: (x @ y) * 2 - 1, (a, b))
    no_fallbacks(f)


@pytest.mark.parametrize("sa,sb", [
    ((4, 6, 5), (4, 5, 3)),        # bmm
    ((2, 3, 6, 5), (2, 3, 5, 7)),  # batched over two dims
    ((2, 3, 6, 5), (5, 7)),        # broadcast weight (matmul expands it)
    ((6, 5), (3, 5, 2)),           # broadcast lhs
    ((3, 7, 5), (5,)),             # matrix-vector
    ((5,), (5, 4)),                # vector-matrix
    ((1, 1, 5), (1, 5, 1)),
])
def test_matmul_ranks(sa, sb):
    f = check(lambda x, y: torch.matmul(x, y) + 0.5, (make_input(sa), make_input(sb)))
    no_fallbacks(f)


def test_linear_bias_activation_fuses_into_one_epilogue_kernel():
    def g(x, w, b):
        return F.gelu(F.linear(x, w, b)) * 2
    args = (make_input((4, 7, 24)), make_input((40, 24)), make_input((40,)))
    f = check(g, args)
    no_fallbacks(f)
    assert gemm_steps(f) == 1
    ks = kiln.kernels(f)
    assert len(ks) == 1 and "add" in ks[0].name and "erf" in ks[0].name, [k.name for k in ks]


@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, 2.0), (0, 1), (0, -3), (2, 0)])
def test_addmm_and_baddbmm_scalars(beta, alpha):
    bias = make_input((1, 6))
    bias[0, 2] = float("nan")  # beta == 0: torch ignores the bias, nan included
    a, b = make_input((5, 4)), make_input((4, 6))
    check(lambda s, x, y: torch.addmm(s, x, y, beta=beta, alpha=alpha), (bias, a, b))
    kiln.reset()
    s3, x3, y3 = make_input((3, 5, 6)), make_input((3, 5, 4)), make_input((3, 4, 6))
    check(lambda s, x, y: torch.baddbmm(s, x, y, beta=beta, alpha=alpha), (s3, x3, y3))


@pytest.mark.parametrize("sa,sb", [((0, 5), (5, 3)), ((4, 0), (0, 3)), ((4, 5), (5, 0)), ((2, 0, 3), (2, 3, 4)),
                                   ((0, 3, 2), (0, 2, 4))])
def test_empty_dims(sa, sb):
    # K == 0 is a sum of nothing: zeros, written by the runtime (poisoned outputs would show)
    f = check(lambda x, y: torch.matmul(x, y) + 1, (make_input(sa), make_input(sb)))
    no_fallbacks(f)


def test_float64_and_edge_values():
    a = make_input((6, 5), dtype=torch.float64)
    b = make_input((5, 4), dtype=torch.float64)
    a[0, 0], a[1, 1], b[2, 3] = float("inf"), float("nan"), -0.0
    a[2] *= 1e150
    check(lambda x, y: x @ y - 1, (a, b))


def test_negative_zero_product_is_kept():
    # 1x1 products of -0.0 * 1: BLAS with beta = 0 writes -0.0 like eager (no stale +0 from C)
    a = torch.tensor([[-0.0]])
    b = torch.tensor([[1.0]])
    f = kiln.compile(lambda x, y: x @ y)
    out = f(a, b)
    assert math.copysign(1.0, out.item()) == math.copysign(1.0, (a @ b).item())


def test_attention_by_hand_and_einsum():
    def attn(q, k, v, mask):
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
        s = s.masked_fill(mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v
    q, k, v = (make_input((2, 3, 9, 8)) for _ in range(3))
    mask = torch.triu(torch.ones(9, 9, dtype=torch.bool), 1)
    f = check(attn, (q, k, v, mask))
    no_fallbacks(f)
    assert gemm_steps(f) == 2


def test_transposed_computed_operand_is_read_through_a_view():
    # k = x @ Wk computed here; k.transpose is read by the next product as a transpose flag,
    # not copied by a kernel
    def g(x, wq, wk):
        q, k = x @ wq, (x * 2) @ wk
        return q @ k.transpose(0, 1)
    # Two chained float32 products, each summed in its library's own order (oneDNN here, MKL
    # in eager): a few ulps of the operands' magnitudes apart, beyond the 1e-5 default.
    f = check(g, (make_input((10, 8)), make_input((8, 6)), make_input((8, 6))), atol=1e-4, rtol=1e-4)
    no_fallbacks(f)
    assert not any(k.name.endswith("_copy") for k in kiln.kernels(f)), [k.name for k in kiln.kernels(f)]


def test_integer_matmul_stays_a_fallback():
    a = make_input((4, 5), dtype=torch.int64)
    b = make_input((5, 3), dtype=torch.int64)
    check(lambda x, y: x @ y + 1, (a, b), expect_compiled=False)
    assert kiln.counters()["fallback_ops"] >= 1


def test_eager_knob_keeps_matmuls_as_fallbacks():
    with kiln.config.patch(matmul="eager"):
        f = check(lambda x, y: x @ y + 1, (make_input((4, 5)), make_input((5, 3))), expect_compiled=False)
        assert gemm_steps(f) == 0
        assert kiln.counters()["fallback_op_counts"], kiln.counters()


def test_every_library_gives_the_same_values():
    # float32 on oneDNN (auto, where libdnnl is installed), on torch's MKL, and on OpenBLAS;
    # float64 goes to MKL or OpenBLAS in every case (oneDNN has no dgemm).
    args = (make_input((37, 29), layout="transposed"), make_input((29, 41)), make_input((41,)))
    g = lambda x, w, b: torch.relu(x @ w + b)
    for choice in ("auto", "mkl", "openblas"):
        with kiln.config.patch(blas=choice):
            kiln.reset()
            for dtype in (torch.float32, torch.float64):
                f = check(g, tuple(a.to(dtype) for a in args))
                no_fallbacks(f)


def test_auto_runs_float32_products_on_onednn_when_installed():
    import ctypes
    try:
        ctypes.CDLL("libdnnl.so.2")
    except OSError:
        pytest.skip("libdnnl.so.2 is not installed")
    if "GenuineIntel" in open("/proc/cpuinfo").read():
        pytest.skip("an Intel CPU: auto keeps float32 products on torch's MKL there")
    assert kiln._C.blas_library().startswith("onednn sgemm"), kiln._C.blas_library()
    f = kiln.compile(lambda x, w: x @ w)
    x, w = make_input((64, 32)), make_input((32, 16))
    assert_same(f(x, w), x @ w)
    assert "onednn" in str(kiln.explain(f, x, w))


def test_openblas_gives_the_same_values():
    args = (make_input((37, 29), layout="transposed"), make_input((29, 41)), make_input((41,)))
    g = lambda x, w, b: torch.relu(x @ w + b)
    with kiln.config.patch(blas="openblas"):
        assert "openblas" in kiln._C.blas_library()
        f = check(g, args)
        no_fallbacks(f)


def test_threads_split_rows_and_columns():
    # many rows (row blocks), one row and many columns (column blocks), a batch (whole matrices)
    with kiln.config.patch(num_threads=2):
        for sa, sb in [((300, 64), (64, 70)), ((1, 64), (64, 3000)), ((5, 40, 30), (5, 30, 20))]:
            kiln.reset()
            check(lambda x, y: x @ y, (make_input(sa), make_input(sb)))


def test_module_with_linear_layers():
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8)).eval()
    x = make_input((5, 16))
    f = kiln.compile(m)
    with torch.no_grad():
        assert_same(f(x), m(x))
        assert_same(f(x), m(x))
    no_fallbacks(f)


def test_batch_dims_that_do_not_merge_are_read_in_place():
    # keys = cache[:, :L].transpose(1, 2) has batch dims (B, H) that no single stride spans:
    # matmul's reshape to [B*H, ...] would copy; the BLAS step reads the view per matrix instead
    def g(q, cache):
        keys = cache[:, :9].transpose(1, 2)          # [B, H, L, D] over a [B, Lmax, H, D] cache
        s = torch.matmul(q, keys.transpose(2, 3))    # [B, H, 1, L]
        return torch.matmul(torch.softmax(s, -1), keys)
    q, cache = make_input((2, 3, 1, 8)), make_input((2, 12, 3, 8))
    f = check(g, (q, cache))
    no_fallbacks(f)
    assert not any(k.name.endswith("_copy") or k.name.endswith("_cast") for k in kiln.kernels(f)), \
        [k.name for k in kiln.kernels(f)]


def test_output_that_reshapes_a_product_is_written_by_it():
    # linear without a bias on a 3-D input returns reshape(mm): no copy kernel
    w = make_input((12, 20))
    f = check(lambda x: F.linear(x, w), (make_input((3, 5, 20)),))
    assert kiln.kernels(f) == [], [k.name for k in kiln.kernels(f)]
    no_fallbacks(f)


def test_aliased_product_still_read_by_kernels_and_other_products():
    w, v = make_input((12, 20)), make_input((12, 4))
    def g(x):
        y = F.linear(x, w)                    # [3, 5, 12]: an output, and read below
        return y, y.sum(-1), y @ v            # a row kernel and a product read its buffer
    f = check(g, (make_input((3, 5, 20)),))
    no_fallbacks(f)


def test_product_read_by_a_fallback_keeps_its_own_buffer():
    w = make_input((12, 20))
    def g(x):
        y = x @ w.t()                         # [15, 12]
        return y.reshape(3, 5, 12), torch.cummax(y, 0).values   # cummax runs eagerly on y
    check(g, (make_input((15, 20)),), expect_compiled=False)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(7, 7), (5, 9), (9, 5), (128, 128), (96, 160)])
def test_scaled_dot_product_attention(causal, L, S):
    # small sizes take torch's math path (tril, _safe_softmax), large ones its fused CPU kernel
    # (_scaled_dot_product_flash_attention_for_cpu): both lower to two products and a row kernel
    q, k, v = make_input((2, 3, L, 16)), make_input((2, 3, S, 16)), make_input((2, 3, S, 8))
    f = check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal) + 1, (q, k, v))
    no_fallbacks(f)
    kiln.reset()
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.3), (q, k, v))


@pytest.mark.parametrize("L,S", [(8, 8), (96, 160)])
def test_attention_with_masks(L, S):
    # boolean and additive masks, broadcast over batch and heads, with rows the mask hides
    # entirely (eager's fused kernel gives 0 there) and -inf / large negative entries
    q, k, v = make_input((2, 3, L, 16)), make_input((2, 3, S, 16)), make_input((2, 3, S, 8))
    bmask = make_input((L, S), dtype=torch.bool)
    bmask[1] = False
    fmask = make_input((2, 1, L, S))
    fmask[0, 0, 2] = float("-inf")
    fmask[1, 0, :, :3] = -1e9
    for mask in (bmask, fmask):
        kiln.reset()
        f = check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 2, (q, k, v))
        no_fallbacks(f)


def test_attention_with_dropout_stays_eager_inside_the_program():
    q, k, v = make_input((1, 2, 8, 8)), make_input((1, 2, 8, 8)), make_input((1, 2, 8, 8))
    torch.manual_seed(0)
    out = kiln.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5) * 2)(q, k, v)
    assert out.shape == (1, 2, 8, 8)
    assert kiln.counters()["eager_calls"] == 0
    assert kiln.counters()["fallback_op_counts"], kiln.counters()


def test_safe_softmax_rows_of_minus_inf_are_zero():
    x = make_input((4, 6))
    x[1] = float("-inf")
    x[2, 3] = float("nan")
    f = check(lambda x: torch.ops.aten._safe_softmax(x, -1) * 3, (x,))
    no_fallbacks(f)


def test_tril_of_bool_tensor():
    check(lambda x: torch.tril(x > 0) | torch.triu(x < -1, 1), (make_input((5, 7)),))


@pytest.mark.parametrize("op", ["mm", "bmm", "matmul4d", "baddbmm"])
def test_signed_zero_of_single_products_follows_eager(op):
    # K = 1 and a -0 product: eager's mm returns -0 (BLAS), its bmm +0 (a zeroed accumulator)
    a = torch.tensor([[0.5], [-2.0], [0.0]])
    b = torch.tensor([[-0.0, 3.0, -0.0, 1.0]])
    fn, args = {
        "mm": (lambda x, y: x @ y, (a, b)),
        "bmm": (lambda x, y: torch.bmm(x, y), (a.expand(2, 3, 1).contiguous(), b.expand(2, 1, 4).contiguous())),
        "matmul4d": (lambda x, y: torch.atan2(x @ y, x @ y),
                     (a.expand(2, 2, 3, 1).contiguous(), b.expand(2, 2, 1, 4).contiguous())),
        "baddbmm": (lambda x, y: torch.baddbmm(torch.zeros(2, 3, 4), x, y, beta=0),
                    (a.expand(2, 3, 1).contiguous(), b.expand(2, 1, 4).contiguous())),
    }[op]
    f = kiln.compile(fn)
    f(*args)
    got, want = f(*args), fn(*args)
    assert torch.equal(torch.signbit(got), torch.signbit(want)), (got, want)
    assert_same(got, want)


def epilogue_tiles(f):
    """Products of f whose next kernel runs on each tile (Note [Epilogues in cache])."""
    return [g for p in kiln._kernels._compiled_of(f).compiled_programs() for g in p.gemms if "on each tile" in g]


@pytest.mark.parametrize("case", ["linear_gelu", "linear_layernorm", "attention_softmax", "baddbmm_relu",
                                  "one_token", "odd_rows"])
def test_epilogue_runs_on_each_tile_of_its_product(case):
    # Note [Epilogues in cache]: row blocks, a batch's matrices, and the column split of a single
    # row (where the kernel runs after the product instead), all against eager.
    w, bias = make_input((96, 40)), make_input((96,))
    ln = (make_input((96,)), make_input((96,)))
    fn, inputs = {
        "linear_gelu": (lambda x: F.gelu(F.linear(x, w, bias)), (make_input((4, 50, 40)),)),
        "linear_layernorm": (lambda x: F.layer_norm(F.linear(x, w, bias) + 1, (96,), *ln), (make_input((130, 40)),)),
        "attention_softmax": (lambda q, k: torch.softmax(q @ k.transpose(-1, -2) * 0.125, -1),
                              (make_input((3, 4, 33, 16)), make_input((3, 4, 33, 16)))),
        "baddbmm_relu": (lambda c, a, b: torch.relu(torch.baddbmm(c, a, b)),
                         (make_input((5, 1, 24)), make_input((5, 37, 8)), make_input((5, 8, 24)))),
        "one_token": (lambda x: torch.tanh(F.linear(x, w, bias)), (make_input((1, 40)),)),
        "odd_rows": (lambda x: torch.sigmoid(x @ w.t()) * 2, (make_input((67, 40)),)),
    }[case]
    f = check(fn, inputs)
    no_fallbacks(f)
    assert epilogue_tiles(f), [p.gemms for p in kiln._kernels._compiled_of(f).compiled_programs()]


def test_kernel_writing_an_operand_of_its_product_runs_after_it():
    # x[:, :32] = tanh(x . x)[:, :32] writes (in place, or through the copy-back of a mutated
    # argument) the tensor the product reads as both operands: never before the product is done.
    def fn(x):
        x[:, :32] = torch.tanh(x @ x)[:, :32]
        return x

    x = make_input((64, 64)) * 0.2
    f = kiln.compile(fn)
    for _ in range(3):  # capture, then compiled calls on fresh copies
        mine, theirs = x.clone(), x.clone()
        assert_same(f(mine), fn(theirs))
        assert_same(mine, theirs)
    no_fallbacks(f)
    assert gemm_steps(f) == 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_scaled_dot_product_attention_with_grouped_query_heads(causal, masked):
    # enable_gqa: 8 query heads over 2 key/value heads (query head h reads head h // 4), lowered
    # with the key/value heads broadcast, never copied
    q, k, v = make_input((2, 8, 7, 16)), make_input((2, 2, 7, 16)), make_input((2, 2, 7, 16))
    mask = (make_input((7, 7)) > -0.5) if masked and not causal else None
    f = check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                             enable_gqa=True), (q, k, v))
    no_fallbacks(f)
