/// \file bindings.h
/// Shared pieces of the `kiln._C` extension: the torch handles handed over at import, and the
/// per-backend registration functions.
#pragma once

#include <pybind11/pybind11.h>

namespace kiln::py_bind {
namespace py = pybind11;

/// torch objects the runtime needs, handed over once by kiln/__init__.py.
struct TorchHandles {
  py::object empty_strided;
  py::dict dtypes;  // name -> torch.dtype
};
TorchHandles& torch_handles();

/// Registers LeafGetters (reads parameters, buffers and guarded attributes on each call).
void define_leaf_getters(py::module_& m);

/// Registers compile_graph, Program, Entry and host_target (the LLVM CPU backend).
void define_cpu(py::module_& m);

/// Registers the CUDA backend: nvrtc_info, set_nvrtc_search_paths, cuda_available,
/// cuda_unavailable_reason, cuda_device_info, cuda_codegen, CudaProgram, CudaError.
void define_cuda(py::module_& m);

}  // namespace kiln::py_bind
