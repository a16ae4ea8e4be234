"""The cuBLASLt calls kiln builds for products with a bias epilogue (runtime/cublaslt.cpp),
checked against the real library without a GPU: cuBLASLt creates the operation and layout
descriptors on the host and answers INVALID_VALUE to an attribute id, size or value it does not
take. The library comes from the nvidia-cublas wheel (scripts/setup.sh) or PyTorch's."""
import os

import pytest
import torch
import torch.nn.functional as F

from kiln import _C

pytestmark = pytest.mark.skipif(not hasattr(_C, "CudaProgram") or not _C.nvrtc_info()["available"],
                                reason="no CUDA backend or no NVRTC")


def _wheel_cublaslt():
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        path = os.path.join(root, "cu13", "lib", "libcublasLt.so.13")
        if os.path.exists(path):
            return path
    return None


@pytest.fixture(scope="module")
def cublaslt():
    path = _wheel_cublaslt()
    if path:
        _C.cublaslt_prefer(path)
    info = _C.cublaslt_info()
    if not info["available"]:
        pytest.skip(f"cuBLASLt: {info['why']}")
    return info


def R(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BF, HF = torch.bfloat16, torch.float16
CASES = {
    "linear_f32": (lambda x, w, b: F.linear(x, w, b), [R(2, 9, 48), R(40, 48), R(40)]),
    "linear_bias_slice_f32": (lambda x, w, b: torch.relu(F.linear(x, w, b[3:43])), [R(9, 48), R(40, 48), R(50)]),
    "linear_bf16": (lambda x, w, b: F.linear(x, w, b), [R(2, 9, 48, dtype=BF), R(40, 48, dtype=BF), R(40, dtype=BF)]),
    # a transposed input (column-major operand), a row-major weight, an operand 2 bytes off alignment
    "addmm_transposed_f16": (lambda x, w, b: torch.addmm(b, x.t(), w), [R(48, 9, dtype=HF), R(48, 40, dtype=HF),
                                                                        R(40, dtype=HF)]),
    "linear_misaligned_bf16": (lambda x, w, b: F.linear(x[1:], w, b), [R(10, 48, dtype=BF), R(40, 48, dtype=BF),
                                                                       R(40, dtype=BF)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cublaslt_accepts_the_descriptors_kiln_builds(cublaslt, name):
    from kiln import _cuda
    fn, args = CASES[name]
    tracer = _cuda.trace_graph(fn, tuple(args))
    prog = _C.CudaProgram(tracer.builder, 0, 90)
    checked = prog.check_cublaslt()
    assert checked, f"{name}: no product runs on cuBLASLt:\n{[s for s in prog.steps()]}"
    for product, why in checked.items():
        assert why == "", f"{name}: cuBLASLt refused {product}: {why}"
