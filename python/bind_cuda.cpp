/// \file bind_cuda.cpp
/// The CUDA half of `kiln._C`: NVRTC/driver discovery, `cuda_codegen` (source + PTX without a
/// GPU) and `CudaProgram` (compiled kernels run on device pointers PyTorch allocated).
/// kiln_module.cpp calls define_cuda(m) after registering GraphBuilder; kiln's own exceptions
/// (Unsupported, InternalError) reach Python through the translators registered there.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "capture/graph_builder.h"
#include "codegen_cuda/nvrtc_compiler.h"
#include "python/bindings.h"
#include "runtime/compile_cuda.h"
#include "runtime/cublas.h"
#include "runtime/cublaslt.h"
#include "runtime/cuda_driver.h"
#include "runtime/cuda_program.h"
#include "support/config.h"
#include "support/error.h"

namespace py = pybind11;
using namespace kiln;

namespace {

py::dict kernel_dict(const runtime::CudaProgram& p, size_t i) {
  const auto& k = p.kernels()[i];
  py::dict d;
  d["name"] = k.name;
  d["symbol"] = k.name;
  d["source"] = k.source;
  d["ptx"] = k.ptx;
  d["has_cubin"] = !k.cubin.empty();
  d["loop_ir"] = ir::print(p.program().kernels[i]);
  d["row"] = k.shape.row;
  d["block"] = k.shape.block;
  d["grid"] = k.shape.grid();
  d["items_per_thread"] = k.shape.items_per_thread;
  d["columns"] = k.shape.columns;  // column kernels: adjacent outer iterations per block (else 0)
  d["params"] = k.shape.buffers;  // program buffer ids of the pointer parameters, then status
  d["may_fail"] = k.shape.may_fail;
  d["compile_ms"] = k.compile_ms;
  d["cached"] = k.cached;
  d["nvrtc_log"] = k.nvrtc_log;
  return d;
}

py::list kernel_list(const runtime::CudaProgram& p) {
  py::list out;
  for (size_t i = 0; i < p.kernels().size(); ++i) out.append(kernel_dict(p, i));
  return out;
}

/// What Python needs to allocate each buffer: kind, leaf/output index, dtype, sizes, strides.
py::list buffer_list(const runtime::CudaProgram& p) {
  py::list out;
  for (const auto& b : p.program().buffers) {
    const char* kind = b.kind == ir::BufferKind::Input    ? "input"
                       : b.kind == ir::BufferKind::Output ? "output"
                       : b.kind == ir::BufferKind::Temp   ? "temp"
                       : b.kind == ir::BufferKind::Shared ? "shared"
                                                          : "extern";
    out.append(py::dict(py::arg("kind") = kind, py::arg("index") = b.index, py::arg("dtype") = ir::dtype_name(b.dtype),
                        py::arg("sizes") = b.sizes, py::arg("strides") = b.strides,
                        py::arg("storage_numel") = b.storage_numel()));
  }
  return out;
}

/// The extern steps (eager ops): fallback table index, operand and result buffers, and per
/// operand the strided view of its buffer to pass (None: the buffer's tensor as it is).
py::list extern_list(const runtime::CudaProgram& p) {
  py::list out;
  for (const auto& e : p.program().externs) {
    py::list views;
    for (size_t k = 0; k < e.inputs.size(); ++k) {
      if (k < e.views.size() && e.views[k].is_view)
        views.append(py::make_tuple(e.views[k].sizes, e.views[k].strides, e.views[k].offset));
      else
        views.append(py::none());
    }
    out.append(py::dict(py::arg("table_index") = e.table_index, py::arg("inputs") = e.inputs,
                        py::arg("outputs") = e.outputs, py::arg("views") = views, py::arg("name") = e.name));
  }
  return out;
}

py::list output_list(const runtime::CudaProgram& p) {
  py::list out;
  for (const auto& o : p.program().outputs)
    out.append(py::make_tuple(o.kind == ir::OutputSpec::Kind::Buffer ? "buffer" : "input", o.index));
  return out;
}

}  // namespace

namespace kiln::py_bind {

/// A joint graph compiled for CUDA training (runtime/compile_cuda.h) with its texts.
struct CudaTraining {
  std::shared_ptr<runtime::CudaProgram> forward, backward;
  passes::Partition partition;
  std::string joint_text, partition_text;
};

/// Registers the CUDA backend: nvrtc_info, cuda_available, cuda_codegen, CudaProgram, CudaError.
void define_cuda(py::module_& m) {
  // A failed driver call (module load, launch) names the kernel; Python sees kiln._C.CudaError.
  py::register_exception<runtime::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def("set_nvrtc_search_paths", &cuda::set_nvrtc_search_paths,
        "Library files or folders to try for libnvrtc before the loader's search (after KILN_NVRTC).");
  m.def("nvrtc_info", [] {
    std::string why;
    bool ok = cuda::nvrtc_available(&why);
    return py::dict(py::arg("available") = ok, py::arg("path") = cuda::nvrtc_library(),
                    py::arg("version") = cuda::nvrtc_version(), py::arg("why") = why);
  });
  m.def("cuda_available", [] { return runtime::cuda_available(); });
  m.def("cublas_prefer", &runtime::cublas_prefer, "a loaded libcublas (PyTorch's) to use before searching");
  m.def("cublas_info", [] {
    std::string why;
    bool ok = runtime::cublas_available(&why);
    return py::dict(py::arg("available") = ok, py::arg("why") = why);
  });
  m.def("cublaslt_prefer", &runtime::cublaslt_prefer,
        "a cuBLASLt library file (PyTorch's, or a wheel's) to use before searching; before its first use");
  m.def("cublaslt_info", [] {
    std::string why;
    bool ok = runtime::cublaslt_available(&why);
    return py::dict(py::arg("available") = ok, py::arg("why") = why);
  });
  m.def("cuda_unavailable_reason", [] {
    std::string why;
    runtime::cuda_available(&why);
    return why;
  });
  m.def("cuda_device_info", [](int device) {
    return py::dict(py::arg("capability") = runtime::cuda_compute_capability(device),
                    py::arg("multiprocessors") = runtime::cuda_multiprocessor_count(device));
  });
  m.def(
      "cuda_codegen",
      [](const capture::GraphBuilder& b, int arch, const std::string& debug_dir) {
        std::shared_ptr<runtime::CudaProgram> prog;
        {
          py::gil_scoped_release release;
          prog = runtime::compile_cuda_graph(b.graph(), arch > 0 ? arch : runtime::cuda_default_arch(-1), /*want_cubin=*/false,
                                              debug_dir);
        }
        return kernel_list(*prog);
      },
      py::arg("builder"), py::arg("arch") = 0, py::arg("debug_dir") = "",
      "Runs the pass pipeline on the builder's graph, emits and NVRTC-compiles every kernel (no GPU needed). "
      "arch: compute capability (90 for sm_90; 0: 90). Returns one dict per kernel: name, source, ptx, ...");

  py::class_<CudaTraining> training(m, "CudaTraining");
  training.def_readonly("forward", &CudaTraining::forward)
      .def_readonly("backward", &CudaTraining::backward)
      .def_readonly("joint_graph", &CudaTraining::joint_text)
      .def_readonly("partition", &CudaTraining::partition_text);
  def_partition_fields<CudaTraining>(training);
  m.def(
      "cuda_training",
      [](const capture::GraphBuilder& b, int forward_outputs, const std::vector<int>& tangents, int backward_start,
         int device, int arch, bool want_cubin, bool recompute, const std::string& debug_dir) {
        passes::JointSpec spec{forward_outputs, tangents, backward_start};
        passes::PartitionOptions popts;
        popts.recompute = recompute;
        int a = arch > 0 ? arch : runtime::cuda_default_arch(device);
        runtime::CompiledCudaTraining t;
        {
          py::gil_scoped_release release;
          t = runtime::compile_cuda_training(b.graph(), spec, popts, a, want_cubin, debug_dir);
        }
        CudaTraining out{t.forward, t.backward, std::move(t.partition), std::move(t.joint_text), ""};
        out.partition_text = passes::describe(b.graph(), out.partition);
        return out;
      },
      py::arg("builder"), py::arg("forward_outputs"), py::arg("tangents"), py::arg("backward_start"),
      py::arg("device") = -1, py::arg("arch") = 0, py::arg("want_cubin") = false, py::arg("recompute") = true,
      py::arg("debug_dir") = "",
      "Partitions the builder's joint forward+backward graph and compiles both programs for CUDA (PTX; "
      "cubins too with want_cubin, which needs the driver).");

  py::class_<runtime::CudaProgram, std::shared_ptr<runtime::CudaProgram>>(m, "CudaProgram")
      .def(py::init([](const capture::GraphBuilder& b, int device, int arch, const std::string& debug_dir) {
             int a = arch > 0 ? arch : runtime::cuda_default_arch(device);
             py::gil_scoped_release release;
             return runtime::compile_cuda_graph(b.graph(), a, /*want_cubin=*/true, debug_dir);
           }),
           py::arg("builder"), py::arg("device") = 0, py::arg("arch") = 0, py::arg("debug_dir") = "")
      .def(
          "run",
          [](runtime::CudaProgram& p, const std::vector<uint64_t>& ptrs, uint64_t stream, int device,
             py::object on_extern) {
            runtime::CudaProgram::ExternFn run_extern;
            if (!on_extern.is_none())
              run_extern = [&](size_t i, std::vector<uint64_t>& ps) {
                py::gil_scoped_acquire gil;
                py::object got = on_extern(i);
                if (got.is_none() || py::isinstance<py::bool_>(got)) return false;
                auto out = got.cast<std::vector<uint64_t>>();
                const auto& bufs = p.program().externs[i].outputs;
                KILN_CHECK(out.size() == bufs.size(), "extern {} gave {} pointers for {} results", i, out.size(),
                           bufs.size());
                for (size_t k = 0; k < bufs.size(); ++k) ps[bufs[k]] = out[k];
                return true;
              };
            py::gil_scoped_release release;
            return p.run(ptrs, stream, device, run_extern);
          },
          py::arg("ptrs"), py::arg("stream") = 0, py::arg("device") = 0, py::arg("on_extern") = py::none(),
          "ptrs: one device pointer per buffer, then the status word (0 allowed when not may_fail). "
          "on_extern(i): runs externs()[i] (an eager op on the stream) and returns its results' data pointers, "
          "or False when it failed. Returns False when a kernel met an integer division by zero or an index out "
          "of range, or an extern failed.")
      .def("load", [](runtime::CudaProgram& p, int device) { p.load(device); }, py::arg("device") = 0)
      .def("steps",
           [](const runtime::CudaProgram& p) {
             // ("kernel", index) or ("gemm", {a, b: (buffer, sizes, strides, offset), out: buffer,
             // bias: (buffer, offset) or None}), in order
             py::list out;
             const auto& kp = p.program();
             for (const auto& st : kp.steps) {
               if (st.kind == ir::Step::Kind::Gemm) {
                 const auto& g = kp.gemms[st.index];
                 auto operand = [](const ir::GemmOperand& o) {
                   return py::make_tuple(o.buffer, o.sizes, o.strides, o.offset);
                 };
                 py::object bias = g.bias < 0 ? py::object(py::none()) : py::make_tuple(g.bias, g.bias_offset);
                 out.append(py::make_tuple("gemm", py::dict(py::arg("a") = operand(g.a), py::arg("b") = operand(g.b),
                                                            py::arg("out") = g.out, py::arg("bias") = bias,
                                                            py::arg("name") = g.name)));
               } else {
                 out.append(py::make_tuple(st.kind == ir::Step::Kind::Kernel ? "kernel" : "extern", st.index));
               }
             }
             return out;
           })
      .def("check_cublaslt",
           [](const runtime::CudaProgram& p) {
             // {product name: what cuBLASLt refused ("" when its descriptors build)} for the
             // products that run on cuBLASLt; needs the library, not a GPU.
             py::dict out;
             const auto& kp = p.program();
             for (const auto& g : kp.gemms)
               if (runtime::needs_cublaslt(g))
                 out[py::str(g.name)] = runtime::cublaslt_check_descriptors(g, kp.buffers);
             return out;
           })
      .def("externs", &extern_list)
      .def("buffers", &buffer_list)
      .def("outputs", &output_list)
      .def("kernels", &kernel_list)
      .def_property_readonly("may_fail", &runtime::CudaProgram::may_fail)
      .def_property_readonly("last_failure", &runtime::CudaProgram::last_failure,
                             "why the last run returned False when neither a kernel nor an extern did")
      .def_property_readonly("arch", &runtime::CudaProgram::arch)
      .def_property_readonly("compile_ms", &runtime::CudaProgram::compile_ms)
      .def_property_readonly("calls", &runtime::CudaProgram::calls)
      .def_property_readonly("loop_ir", [](const runtime::CudaProgram& p) { return ir::print(p.program()); })
      .def_property_readonly("fusion_log", [](const runtime::CudaProgram& p) { return p.program().fusion_log; });
}

}  // namespace kiln::py_bind
