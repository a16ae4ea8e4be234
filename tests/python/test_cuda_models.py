"""The model blocks of benchmarks/models.py (what tests/python/test_models.py checks on the CPU)
through the CUDA backend:
  test_every_kernel_compiles   every kernel of every block, at the benchmark's sizes, compiles
                               through NVRTC (no GPU needed);
  test_emulated_blocks_match_eager  every block at its small sizes, float32 and bfloat16, run on
                               the CPU emulation of the CUDA execution model (cuda_emulation.py:
                               kernels, products, eager ops in between) against eager on the CPU;
  test_gpu_blocks_match_eager  the same on a GPU against eager CUDA (skipped without one).
About 2.5 minutes on 2 cores, most of it the emulation of swin's and mbconv's kernels.
"""

import os
import sys

import pytest
import torch

import kiln
from kiln import _cuda
from kiln.testing import assert_same
from test_cuda_codegen import HAS_GPU, needs_emulation, needs_nvrtc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import models  # noqa: E402

# float32: products and reductions sum in another order than eager's; bfloat16: one rounding
# of a value a layer later magnifies, as in the half cases of test_cuda_codegen.py.
TOL = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2}


def _block(name, dtype, small, device="cpu"):
    m = models.build(name, small=small).to(device=device, dtype=dtype)

    def inputs():
        return tuple(a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)
                     if isinstance(a, torch.Tensor) else a for a in m.make_inputs(seed=0))
    return m, inputs


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for v in x for t in _flat(v)] if isinstance(x, (tuple, list)) else []


@needs_nvrtc
@pytest.mark.parametrize("name", models.NAMES)
def test_every_kernel_compiles(name):
    torch.set_grad_enabled(False)
    m, inputs = _block(name, torch.float32, small=False)
    kernels = kiln.codegen(m, *inputs(), target="cuda")
    assert kernels, f"{name}: no kernels"
    for k in kernels:
        assert ".entry" in k.ptx and k.name in k.ptx, k.name


@needs_emulation
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", models.NAMES)
def test_emulated_blocks_match_eager(name, dtype):
    from cuda_emulation import emulate
    torch.set_grad_enabled(False)
    m, inputs = _block(name, dtype, small=True)
    want = _flat(m(*inputs()))  # fresh inputs for each side: some blocks update them in place
    got, ok = emulate(m, *inputs())
    assert ok, f"{name}: a kernel flagged a failure"
    assert_same(got, want, rtol=TOL[dtype], atol=TOL[dtype], what=f"{name} {dtype}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", models.NAMES)
def test_gpu_blocks_match_eager(name, dtype):
    torch.set_grad_enabled(False)
    m, inputs = _block(name, dtype, small=True, device="cuda")
    want = _flat(m(*inputs()))
    tracer = _cuda.trace_graph(m, inputs())
    runner = _cuda.compile_cuda_entry(tracer)
    runner.poison_outputs = True
    got = runner(tracer.leaves)
    assert got is not False, f"{name}: the program failed"
    torch.cuda.synchronize()
    assert_same(got, want, rtol=TOL[dtype], atol=TOL[dtype], what=f"{name} {dtype}")
