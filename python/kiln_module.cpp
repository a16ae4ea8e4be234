/// \file kiln_module.cpp
/// The `kiln._C` extension: knobs, the graph builder the tracer drives, compilation, guards
/// and compiled entries. kiln errors become Python exceptions here and nowhere else.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "capture/graph_builder.h"
#include "codegen_cpu/cpu_codegen.h"
#include "passes/pipeline.h"
#include "python/guard_set.h"
#include "runtime/compiled_program.h"
#include "runtime/thread_pool.h"
#include "support/config.h"
#include "support/error.h"

namespace py = pybind11;
using namespace kiln;

namespace {

/// torch objects the runtime needs, handed over once by kiln/__init__.py.
struct TorchHandles {
  py::object empty_strided;
  py::dict dtypes;  // name -> torch.dtype
};
TorchHandles& torch_handles() {
  static TorchHandles* h = new TorchHandles();
  return *h;
}

ir::Attrs make_attrs(const std::vector<int64_t>& ints, const std::vector<double>& floats, const std::string& dtype,
                     int64_t int_value) {
  ir::Attrs a;
  a.ints = ints;
  a.floats = floats;
  if (!dtype.empty()) a.dtype = ir::dtype_from_name(dtype);
  a.int_value = int_value;
  return a;
}

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

PYBIND11_MODULE(_C, m) {
  m.doc() = "kiln's C++ core";
  static py::exception<Unsupported> unsupported(m, "Unsupported", PyExc_RuntimeError);
  static py::exception<InternalError> internal(m, "InternalError", PyExc_RuntimeError);
  py::register_exception<UserError>(m, "UserError", PyExc_ValueError);

  m.def("set_torch_handles", [](py::object empty_strided, py::dict dtypes) {
    torch_handles().empty_strided = std::move(empty_strided);
    torch_handles().dtypes = std::move(dtypes);
  });
  m.def("knobs", [] {
    py::list out;
    for (const auto& k : knobs())
      out.append(py::dict(py::arg("name") = k.name, py::arg("env") = k.env, py::arg("value") = k.value,
                          py::arg("default") = k.default_value, py::arg("doc") = k.doc));
    return out;
  });
  m.def("knob", [](const std::string& n) { return knob(n); });
  m.def("set_knob", [](const std::string& n, const std::string& v) {
    set_knob(n, v);
    if (n == "num_threads" || n == "KILN_NUM_THREADS") {
      int64_t t = knob_int("num_threads");
      if (t <= 0) t = std::max(1u, std::thread::hardware_concurrency());
      runtime::ThreadPool::get().resize(static_cast<int>(t));
    }
  });
  m.def("log_enabled", &log_enabled);
  m.def("num_threads", [] { return runtime::ThreadPool::get().threads(); });
  m.def("host_target", [] {
    const auto& h = cpu::host_target();
    return py::dict(py::arg("triple") = h.triple, py::arg("cpu") = h.cpu, py::arg("features") = h.features,
                    py::arg("vector_bits") = h.vector_bits);
  });

  py::class_<capture::GraphBuilder>(m, "GraphBuilder")
      .def(py::init<>())
      .def("add_input", [](capture::GraphBuilder& b, const std::string& dtype, const std::vector<int64_t>& sizes,
                           const std::vector<int64_t>& strides, int arg) {
        return b.add_input(ir::dtype_from_name(dtype), sizes, strides, arg);
      })
      .def("call",
           [](capture::GraphBuilder& b, const std::string& op, const py::list& operands, const std::vector<int64_t>& ints,
              const std::vector<double>& floats, const std::string& dtype, int64_t int_value) {
             std::vector<capture::Operand> ops;
             for (py::handle h : operands) {
               auto t = h.cast<py::tuple>();
               int kind = t[0].cast<int>();
               capture::Operand o;
               if (kind == 0) o = capture::Operand::of_value(t[1].cast<int>());
               else if (kind == 1) o = {capture::Operand::Kind::Float, -1, t[1].cast<double>(), 0};
               else if (kind == 2) o = {capture::Operand::Kind::Int, -1, 0, t[1].cast<int64_t>()};
               else o = {capture::Operand::Kind::Bool, -1, 0, t[1].cast<bool>() ? 1 : 0};
               ops.push_back(o);
             }
             return b.call(op, ops, make_attrs(ints, floats, dtype, int_value));
           },
           py::arg("op"), py::arg("operands"), py::arg("ints") = std::vector<int64_t>{},
           py::arg("floats") = std::vector<double>{}, py::arg("dtype") = "", py::arg("int_value") = 0)
      .def("check", [](const capture::GraphBuilder& b, int id, const std::string& dtype, const std::vector<int64_t>& sizes) {
        b.check(id, ir::dtype_from_name(dtype), sizes);
      })
      .def("node_type", [](const capture::GraphBuilder& b, int id) {
        const auto& n = b.node(id);
        return py::make_tuple(ir::dtype_name(n.dtype), n.sizes);
      })
      .def("set_layout", &capture::GraphBuilder::set_layout)
      .def("set_outputs", &capture::GraphBuilder::set_outputs)
      .def("set_default_float", [](capture::GraphBuilder& b, const std::string& d) {
        b.set_default_float(ir::dtype_from_name(d));
      })
      .def("num_nodes", [](const capture::GraphBuilder& b) { return b.graph().nodes.size(); })
      .def("print", [](const capture::GraphBuilder& b) { return ir::print(b.graph()); });

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

  py::class_<py_bind::GuardSet, std::shared_ptr<py_bind::GuardSet>>(m, "GuardSet")
      .def(py::init<>())
      .def("add_tensor", [](py_bind::GuardSet& g, int leaf, py::object type, py::object dtype, const std::string& device,
                            const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides, bool rg) {
        g.add_tensor({leaf, std::move(type), std::move(dtype), device, sizes, strides, rg});
      })
      .def("add_value", [](py_bind::GuardSet& g, int leaf, py::object type, py::object value, bool type_only) {
        g.add_value({leaf, std::move(type), std::move(value), type_only});
      }, py::arg("leaf"), py::arg("type"), py::arg("value"), py::arg("type_only") = false)
      .def("set_grad_mode", &py_bind::GuardSet::set_grad_mode)
      .def("set_leaf_count", &py_bind::GuardSet::set_leaf_count)
      .def("check", &py_bind::GuardSet::check)
      .def("explain", &py_bind::GuardSet::explain)
      .def("describe", &py_bind::GuardSet::describe);

  py::class_<Entry, std::shared_ptr<Entry>>(m, "Entry")
      .def(py::init<std::shared_ptr<py_bind::GuardSet>, Program>())
      .def("__call__", &Entry::call)
      .def_property_readonly("guards", &Entry::guards)
      .def_property_readonly("program", &Entry::program, py::return_value_policy::reference_internal);
}
