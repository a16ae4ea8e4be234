/// \file kiln_module.cpp
/// The `kiln._C` extension: knobs, the graph builder the tracer drives, guards, and the
/// backends' registrations. kiln errors become Python exceptions here and nowhere else.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "capture/graph_builder.h"
#include "python/bindings.h"
#include "python/guard_set.h"
#include "runtime/thread_pool.h"
#include "support/config.h"
#include "support/disk_cache.h"
#include "support/error.h"

namespace py = pybind11;
using namespace kiln;

namespace kiln::py_bind {
TorchHandles& torch_handles() {
  static TorchHandles* h = new TorchHandles();
  return *h;
}
}  // namespace kiln::py_bind

namespace {
using kiln::py_bind::torch_handles;

ir::Attrs make_attrs(const std::vector<int64_t>& ints, const std::vector<double>& floats, const std::string& dtype,
                     int64_t int_value) {
  ir::Attrs a;
  a.ints = ints;
  a.floats = floats;
  if (!dtype.empty()) a.dtype = ir::dtype_from_name(dtype);
  a.int_value = int_value;
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "kiln's C++ core";
  // register_exception also installs the C++ -> Python translation (py::exception alone does not).
  py::register_exception<Unsupported>(m, "Unsupported", PyExc_RuntimeError);
  py::register_exception<InternalError>(m, "InternalError", PyExc_RuntimeError);
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
  // The disk cache of compiled kernels, per kind ("cpu", "cuda"): kiln.cache_info / clear_cache.
  m.def("disk_cache_usage", [](const std::string& kind) {
    DiskCache c(kind);
    auto [entries, bytes] = c.usage();
    DiskCache::Stats st = DiskCache::stats(kind);
    return py::make_tuple(c.dir(), entries, bytes, st.hits, st.misses, st.writes);
  });
  m.def("disk_cache_clear", [](const std::string& kind) { return DiskCache(kind).clear(); });
  // Fallback traits the tracer tells from an op's arguments (add_fallback's `traits`).
  m.attr("FALLBACK_CONVOLUTION") = ir::kFallbackConvolution;
  m.attr("FRESH_OUTPUT") = ir::kFreshOutput;
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
      .def("note_size_rule", &capture::GraphBuilder::note_size_rule, py::arg("size"), py::arg("computed"),
           "a size computed from `size` by a rule that is not affine in it (Note [Dynamic sizes])")
      .def("check", [](const capture::GraphBuilder& b, int id, const std::string& dtype, const std::vector<int64_t>& sizes) {
        b.check(id, ir::dtype_from_name(dtype), sizes);
      })
      .def("node_type", [](const capture::GraphBuilder& b, int id) {
        const auto& n = b.node(id);
        return py::make_tuple(ir::dtype_name(n.dtype), n.sizes);
      })
      .def("add_fallback", [](capture::GraphBuilder& b, int table_index, const std::vector<int>& inputs,
                              const std::vector<std::string>& dtypes, const std::vector<std::vector<int64_t>>& sizes,
                              const std::vector<std::vector<int64_t>>& strides, const std::string& aten_name,
                              int64_t traits) {
        std::vector<ir::DType> ds;
        for (const auto& d : dtypes) ds.push_back(ir::dtype_from_name(d));
        return b.add_fallback(table_index, inputs, ds, sizes, strides, aten_name, traits);
      }, py::arg("table_index"), py::arg("inputs"), py::arg("dtypes"), py::arg("sizes"), py::arg("strides"),
         py::arg("aten_name") = "", py::arg("traits") = 0)
      .def("set_layout", &capture::GraphBuilder::set_layout)
      .def("set_outputs", &capture::GraphBuilder::set_outputs)
      .def("set_output_leaves", &capture::GraphBuilder::set_output_leaves)
      .def("set_input_index", &capture::GraphBuilder::set_input_index)
      .def("set_default_float", [](capture::GraphBuilder& b, const std::string& d) {
        b.set_default_float(ir::dtype_from_name(d));
      })
      .def("num_nodes", [](const capture::GraphBuilder& b) { return b.graph().nodes.size(); })
      .def("print", [](const capture::GraphBuilder& b) { return ir::print(b.graph()); });

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
      .def("add_identity", &py_bind::GuardSet::add_identity)
      .def("add_disjoint", &py_bind::GuardSet::add_disjoint)
      .def("set_leaf_count", &py_bind::GuardSet::set_leaf_count)
      .def("set_symbol_range", &py_bind::GuardSet::set_symbol_range, py::arg("lo"), py::arg("hi"),
           "the range of the symbol s of the symbolic guards")
      .def("make_symbolic", &py_bind::GuardSet::make_symbolic, py::arg("leaf"), py::arg("sizes"), py::arg("strides"),
           "a dynamic program's tensor guard: (base, coeff) forms of one symbol s")
      .def("make_symbolic_value", &py_bind::GuardSet::make_symbolic_value, py::arg("leaf"), py::arg("base"),
           py::arg("coeff"), "a dynamic program's int argument: base + coeff * s")
      .def_property_readonly("symbol", &py_bind::GuardSet::symbol)
      .def("check", &py_bind::GuardSet::check)
      .def("explain", &py_bind::GuardSet::explain)
      .def("describe", &py_bind::GuardSet::describe);

  kiln::py_bind::define_leaf_getters(m);
#ifdef KILN_HAVE_CUDA
  kiln::py_bind::define_cuda(m);
#endif
#ifdef KILN_HAVE_CPU
  kiln::py_bind::define_cpu(m);
#else
  m.def("compile_graph", [](py::object, std::string) -> py::object {
    throw Unsupported("kiln was built without the CPU backend (KILN_CPU=OFF)");
  }, py::arg("builder"), py::arg("debug_dir") = "");
#endif
}
