"""Training steps compiled for CUDA without a GPU: the forward and backward programs of a joint
graph (partitioned as on the CPU) compile to PTX with NVRTC, and run in the CPU emulation of the
CUDA built-ins (cuda_emulation.py) with the gradients eager's autograd gives. On a GPU machine
the same programs run for real through benchmarks/gpu_check.sh."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import _C, _cuda

pytestmark = pytest.mark.skipif(
    not _cuda.HAVE_CUDA_BACKEND or not _cuda.cuda_status()["nvrtc"] or shutil.which("g++") is None,
    reason="needs kiln's CUDA backend, NVRTC and g++ for the CUDA emulation")


def _mlp(x, w1, b1, w2, ln_w, ln_b, target):
    h = F.gelu(x @ w1.t() + b1, approximate="tanh")
    h = F.layer_norm(h, h.shape[-1:], ln_w, ln_b)
    return F.cross_entropy(h @ w2.t(), target, label_smoothing=0.1)


def _attention(q, k, v, w):
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return (a @ w).tanh()


def _rmsnorm_swiglu(x, g, w1, w3):
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g
    return F.silu(h @ w1) * (h @ w3)


def _softmax_loss(x, w, labels):
    logits = x @ w
    return F.nll_loss(F.log_softmax(logits, -1), labels) + logits.softmax(-1).square().mean()


def _embedding(ids, table, w):
    return torch.relu(F.embedding(ids, table) @ w).sum(1)


def _inputs(name, dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape, grad=True):
        return (torch.randn(*shape, generator=g) * 0.5).to(dtype).requires_grad_(grad)
    if name == "mlp":
        return (r(6, 12, grad=False), r(20, 12), r(20), r(5, 20), r(20), r(20),
                torch.randint(0, 5, (6,), generator=g))
    if name == "attention":
        return (r(2, 2, 7, 8), r(2, 2, 7, 8), r(2, 2, 7, 8), r(8, 8))
    if name == "rmsnorm_swiglu":
        return (r(5, 16), r(16), r(16, 24), r(16, 24))
    if name == "softmax_loss":
        return (r(9, 11), r(11, 7), torch.randint(0, 7, (9,), generator=g))
    if name == "embedding":
        return (torch.randint(0, 10, (3, 5), generator=g), r(10, 8), r(8, 6))
    raise KeyError(name)


FUNCTIONS = {"mlp": _mlp, "attention": _attention, "rmsnorm_swiglu": _rmsnorm_swiglu,
             "softmax_loss": _softmax_loss, "embedding": _embedding}


@pytest.mark.parametrize("name,dtype", [(n, torch.float32) for n in sorted(FUNCTIONS)]
                         + [("rmsnorm_swiglu", torch.bfloat16), ("attention", torch.bfloat16)])
def test_emulated_training_step_gives_eagers_gradients(name, dtype):
    from cuda_emulation import emulate_training
    fn = FUNCTIONS[name]
    args = _inputs(name, dtype)
    # bfloat16: one rounding of an intermediate moves a gradient by an ulp of the largest values
    # it sums (kiln's kernels and eager's round at different places): compared to that scale
    scale = lambda t: float(t.float().abs().max()) if t.numel() else 1.0  # noqa: E731
    tol = (lambda want: dict(rtol=1e-4, atol=1e-5)) if dtype == torch.float32 else \
        (lambda want: dict(rtol=0.0, atol=2e-2 * max(scale(want), 1.0)))
    outs, grads, out_grads, tp = emulate_training(fn, *args)
    ref_args = [a.detach().clone().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in args]
    ref = fn(*ref_args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for got, want in zip(outs, ref):
        torch.testing.assert_close(got, want.detach(), **tol(want))
    pairs = [(r, g) for r, g in zip(ref, out_grads) if g is not None]
    wanted = [i for i, a in enumerate(ref_args) if isinstance(a, torch.Tensor) and a.requires_grad]
    eager = torch.autograd.grad([r for r, _ in pairs], [ref_args[i] for i in wanted], [g for _, g in pairs],
                                allow_unused=True)
    for i, want in zip(wanted, eager):
        if want is None:
            assert i not in grads
            continue
        torch.testing.assert_close(grads[i], want, **tol(want), msg=f"gradient of argument {i}")
    assert tp.backward.kernels(), "the backward compiled no kernel"


def test_backward_kernels_of_the_training_blocks_compile_with_nvrtc():
    # Every kernel of both halves went through NVRTC (PTX) inside _C.cuda_training.
    from cuda_emulation import emulate_training
    _, _, _, tp = emulate_training(_mlp, *_inputs("mlp", torch.float32))
    for prog in (tp.forward, tp.backward):
        for k in prog.kernels():
            assert ".entry" in k["ptx"], k["name"]
    assert tp.saved_bytes >= 0 and "saved" in tp.partition



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_training_steps_match_eager(dtype):
    import copy
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.LayerNorm(128),
                                torch.nn.Linear(128, 10)).cuda().to(dtype)
    ref = copy.deepcopy(model)
    mk = kiln.compile(model)
    kiln.reset()
    for _ in range(3):
        x = torch.randn(32, 64, device="cuda", dtype=dtype)
        y = torch.randint(0, 10, (32,), device="cuda")
        F.cross_entropy(mk(x).float(), y).backward()
        F.cross_entropy(ref(x).float(), y).backward()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol)
    c = kiln.counters()
    assert c["compiled_backward_calls"] == 2, c["reasons"]
