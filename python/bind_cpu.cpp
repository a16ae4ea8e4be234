/// \file bind_cpu.cpp
/// The LLVM CPU backend's bindings: compile a captured graph, run it under guards (Entry), and
/// inspect its kernels (LLVM IR, assembly, loop IR, time).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "capture/graph_builder.h"
#include "codegen_cpu/cpu_codegen.h"
#include "passes/pipeline.h"
#include "python/bindings.h"
#include "python/guard_set.h"
#include "runtime/compiled_program.h"
#include "support/config.h"
#include "support/error.h"

namespace kiln::py_bind {
namespace {

/// Writes one artifact into the compile's debug folder; records the first failure.
struct DebugDump {
  std::string dir;
  std::string error;
  void write(const std::string& name, const std::string& text) {
    if (dir.empty() || !error.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::ofstream f(dir + "/" + name);
    if (ec || !f) {
      error = "kiln: cannot write KILN_DEBUG_DIR artifacts to '" + dir + "'";
      return;
    }
    f << text;
  }
};

/// A compiled program plus what Python needs to inspect it.
struct Program {
  std::shared_ptr<runtime::CompiledProgram> compiled;
  std::vector<std::string> timings;
  std::string graph_text;
  double compile_ms = 0;
  std::string dump_error;
};

Program compile_graph(const capture::GraphBuilder& builder, const std::string& debug_dir) {
  auto t0 = std::chrono::steady_clock::now();
  Program out;
  DebugDump dump{debug_dir, ""};
  passes::PassOptions opts;
  opts.verify = knob_bool("verify");
  opts.log_ir = log_enabled("ir");
  opts.log_fusion = log_enabled("fusion");
  if (!debug_dir.empty()) opts.dump = [&](const std::string& n, const std::string& t) { dump.write(n, t); };
  opts.timings = &out.timings;
  out.graph_text = ir::print(builder.graph());
  ir::KernelProgram kp = passes::run_pipeline(builder.graph(), opts);
  cpu::CodegenOptions copts;
  copts.opt_level = static_cast<int>(knob_int("opt_level"));
  cpu::CpuCode code = cpu::compile_cpu(kp, copts);
  out.timings.push_back(fmt::format("llvm (codegen + O{} + jit): {:.3f} ms", copts.opt_level, code.compile_ms));
  if (opts.dump) {
    dump.write("llvm_ir.ll", code.text.module_ir);
    dump.write("assembly.s", cpu::ir_to_asm(code.text.module_ir));
  }
  out.compiled = std::make_shared<runtime::CompiledProgram>(std::move(kp), std::move(code));
  out.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  out.dump_error = dump.error;
  return out;
}

void* data_ptr(PyObject* t) {
  static PyObject* name = PyUnicode_InternFromString("data_ptr");
  py::object p = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t, name));
  if (!p) throw py::error_already_set();
  return PyLong_AsVoidPtr(p.ptr());
}

/// One cache entry of a compiled function: guards, program and the output allocation recipe.
class Entry {
 public:
  Entry(std::shared_ptr<py_bind::GuardSet> guards, Program program)
      : guards_(std::move(guards)), program_(std::move(program)) {
    const auto& p = program_.compiled->program();
    py::dict& dtypes = torch_handles().dtypes;
    for (const auto& b : p.buffers) {
      if (b.kind != ir::BufferKind::Output) {
        alloc_args_.emplace_back();
        continue;
      }
      py::tuple sizes(b.sizes.size()), strides(b.strides.size());
      for (size_t i = 0; i < b.sizes.size(); ++i) {
        sizes[i] = py::int_(b.sizes[i]);
        strides[i] = py::int_(b.strides[i]);
      }
      alloc_args_.push_back(py::make_tuple(sizes, strides));
      dtype_.push_back(dtypes[py::str(ir::dtype_name(b.dtype))]);
    }
  }

  /// Runs on `leaves` if the guards hold: returns the output list, None on a guard miss, or
  /// False when the kernels flagged an error (integer division by zero) and eager must redo it.
  py::object call(const py::list& leaves, bool grad_enabled) {
    if (!guards_->check(leaves, grad_enabled)) return py::none();
    const auto& p = program_.compiled->program();
    std::vector<void*> ptrs(p.buffers.size(), nullptr);
    std::vector<py::object> allocated(p.buffers.size());
    size_t out_k = 0;
    for (size_t i = 0; i < p.buffers.size(); ++i) {
      const auto& b = p.buffers[i];
      if (b.kind == ir::BufferKind::Input) {
        ptrs[i] = data_ptr(PyList_GET_ITEM(leaves.ptr(), b.index));
      } else if (b.kind == ir::BufferKind::Output) {
        py::tuple args = alloc_args_[i];
        allocated[i] = torch_handles().empty_strided(args[0], args[1], py::arg("dtype") = dtype_[out_k++]);
        ptrs[i] = data_ptr(allocated[i].ptr());
      }
    }
    bool ok;
    {
      py::gil_scoped_release release;
      ok = program_.compiled->run(ptrs);
    }
    if (!ok) return py::bool_(false);
    py::list outs(p.outputs.size());
    for (size_t j = 0; j < p.outputs.size(); ++j) {
      const auto& o = p.outputs[j];
      outs[j] = o.kind == ir::OutputSpec::Kind::Buffer ? allocated[o.index] : leaves[o.index];
    }
    return outs;
  }

  std::shared_ptr<py_bind::GuardSet> guards() const { return guards_; }
  const Program& program() const { return program_; }

 private:
  std::shared_ptr<py_bind::GuardSet> guards_;
  Program program_;
  std::vector<py::object> alloc_args_;
  std::vector<py::object> dtype_;
};

py::list kernel_info(const Program& prog) {
  py::list out;
  const auto& p = prog.compiled->program();
  const auto& code = prog.compiled->code();
  for (size_t k = 0; k < p.kernels.size(); ++k) {
    py::dict d;
    d["name"] = p.kernels[k].name;
    d["symbol"] = code.symbols[k];
    d["loop_ir"] = ir::print(p.kernels[k]);
    std::string src;
    for (const auto& [name, text] : code.text.function_ir)
      if (name == code.symbols[k]) src = text;
    d["source"] = src;
    d["time_ns"] = prog.compiled->kernel_ns()[k];
    out.append(d);
  }
  return out;
}

/// The assembly of one kernel, cut from the module's assembly.
std::string kernel_asm(const Program& prog, const std::string& symbol) {
  std::string all = cpu::ir_to_asm(prog.compiled->code().text.module_ir);
  size_t start = all.find("\n" + symbol + ":");
  if (start == std::string::npos) return all;
  size_t end = all.find(".Lfunc_end", start);
  return all.substr(start + 1, end == std::string::npos ? std::string::npos : end - start - 1);
}

}  // namespace

void define_cpu(py::module_& m) {
  m.def("host_target", [] {
    const auto& h = cpu::host_target();
    return py::dict(py::arg("triple") = h.triple, py::arg("cpu") = h.cpu, py::arg("features") = h.features,
                    py::arg("vector_bits") = h.vector_bits);
  });

  py::class_<Program>(m, "Program")
      .def_readonly("graph", &Program::graph_text)
      .def_readonly("compile_ms", &Program::compile_ms)
      .def_readonly("timings", &Program::timings)
      .def_readonly("dump_error", &Program::dump_error)
      .def_property_readonly("fusion_log", [](const Program& p) { return p.compiled->program().fusion_log; })
      .def_property_readonly("loop_ir", [](const Program& p) { return ir::print(p.compiled->program()); })
      .def_property_readonly("llvm_ir", [](const Program& p) { return p.compiled->code().text.module_ir; })
      .def_property_readonly("calls", [](const Program& p) { return p.compiled->calls(); })
      .def("kernels", &kernel_info)
      .def("kernel_asm", &kernel_asm)
      .def("set_profiling", [](Program& p, bool on) { p.compiled->set_profiling(on); });

  m.def("compile_graph", &compile_graph, py::arg("builder"), py::arg("debug_dir") = "");

  py::class_<Entry, std::shared_ptr<Entry>>(m, "Entry")
      .def(py::init<std::shared_ptr<py_bind::GuardSet>, Program>())
      .def("__call__", &Entry::call)
      .def_property_readonly("guards", &Entry::guards)
      .def_property_readonly("program", &Entry::program, py::return_value_policy::reference_internal);
}

}  // namespace kiln::py_bind
