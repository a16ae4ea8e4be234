/// \file bindings.h
/// Shared pieces of the `kiln._C` extension: the torch handles handed over at import, and the
/// per-backend registration functions.
#pragma once

#include <pybind11/pybind11.h>

#include "ir/graph.h"

namespace kiln::py_bind {
namespace py = pybind11;

/// torch objects the runtime needs, handed over once by kiln/__init__.py.
struct TorchHandles {
  py::object empty_strided;
  py::dict dtypes;  // name -> torch.dtype
};
TorchHandles& torch_handles();

/// The partition fields a compiled training step shows Python (a class with a `partition`
/// member of type passes::Partition): which forward outputs are saved values, which leaves the
/// backward reads, where each gradient is among the backward's outputs, and what was saved.
template <class T, class Cls>
void def_partition_fields(Cls& cls) {
  cls.def_property_readonly("saved_positions", [](const T& t) { return t.partition.saved_positions; })
      .def_property_readonly("saved_inputs", [](const T& t) { return t.partition.saved_inputs; })
      .def_property_readonly("gradient_positions", [](const T& t) { return t.partition.gradient_positions; })
      .def_property_readonly("gradient_tangents", [](const T& t) { return t.partition.gradient_tangents; })
      .def_property_readonly("recomputed", [](const T& t) { return t.partition.recomputed.size(); })
      .def_property_readonly("saved_bytes", [](const T& t) { return t.partition.saved_bytes; })
      .def_property_readonly("forward_graph", [](const T& t) { return ir::print(t.partition.forward); })
      .def_property_readonly("backward_graph", [](const T& t) { return ir::print(t.partition.backward); });
}

/// Registers LeafGetters (reads parameters, buffers and guarded attributes on each call).
void define_leaf_getters(py::module_& m);

/// Registers compile_graph, Program, Entry and host_target (the LLVM CPU backend).
void define_cpu(py::module_& m);

/// Registers the CUDA backend: nvrtc_info, set_nvrtc_search_paths, cuda_available,
/// cuda_unavailable_reason, cuda_device_info, cuda_codegen, CudaProgram, CudaError.
void define_cuda(py::module_& m);

}  // namespace kiln::py_bind
