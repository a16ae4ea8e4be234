/// \file guard_set.cpp
/// Fast and verbose guard evaluation over CPython objects.
#include "python/guard_set.h"

#include <fmt/format.h>

#include "support/hash.h"


namespace kiln::py_bind {
namespace {

/// Interned attribute names, created once.
struct Names {
  PyObject* dtype = PyUnicode_InternFromString("dtype");
  PyObject* shape = PyUnicode_InternFromString("shape");
  PyObject* stride = PyUnicode_InternFromString("stride");
  PyObject* requires_grad = PyUnicode_InternFromString("requires_grad");
  PyObject* device = PyUnicode_InternFromString("device");
  PyObject* is_cpu = PyUnicode_InternFromString("is_cpu");
};
const Names& names() {
  static Names* n = new Names();
  return *n;
}

bool tuple_equals(PyObject* tuple, const std::vector<int64_t>& v) {
  if (!tuple || !PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != static_cast<Py_ssize_t>(v.size())) return false;
  for (size_t i = 0; i < v.size(); ++i) {
    long long x = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i));
    if (x != v[i]) {
      PyErr_Clear();
      return false;
    }
  }
  return true;
}

std::string tuple_text(PyObject* t) {
  std::vector<int64_t> v;
  return read_int_tuple(t, v) ? fmt::format("({})", fmt::join(v, ", ")) : std::string("?");
}

std::string device_of(PyObject* t) {
  py::object dev = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, names().device));
  if (!dev) {
    PyErr_Clear();
    return "?";
  }
  return py::str(dev);
}
}  // namespace

bool read_int_tuple(PyObject* tuple, std::vector<int64_t>& out) {
  out.clear();
  if (!tuple || !PyTuple_Check(tuple)) return false;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); ++i) {
    long long x = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i));
    if (x == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    out.push_back(x);
  }
  return true;
}

std::string GuardSet::check_tensor(const TensorGuard& g, PyObject* t, bool verbose) const {
  const Names& n = names();
  if (reinterpret_cast<PyObject*>(Py_TYPE(t)) != g.type.ptr())
    return verbose ? fmt::format("type is {}, expected {}", py::str(py::handle(reinterpret_cast<PyObject*>(Py_TYPE(t)))).cast<std::string>(),
                                 py::str(g.type).cast<std::string>())
                   : "x";
  py::object dtype = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, n.dtype));
  if (dtype.ptr() != g.dtype.ptr())
    return verbose ? fmt::format("dtype is {}, expected {}", py::str(dtype).cast<std::string>(),
                                 py::str(g.dtype).cast<std::string>())
                   : "x";
  py::object shape = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, n.shape));
  if (!g.size_coeff.empty()) {  // forms over the symbol: the sizes fix s, the strides may use it
    std::string bad = check_forms(shape.ptr(), g.sizes, g.size_coeff, "sizes", verbose);
    if (!bad.empty()) return bad;
    py::object stride = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t, n.stride));
    bad = check_forms(stride.ptr(), g.strides, g.stride_coeff, "strides", verbose);
    if (!bad.empty()) return bad;
  } else {
    if (!tuple_equals(shape.ptr(), g.sizes))
      return verbose ? fmt::format("sizes are {}, expected ({})", tuple_text(shape.ptr()), fmt::join(g.sizes, ", "))
                     : "x";
    py::object stride = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t, n.stride));
    if (!tuple_equals(stride.ptr(), g.strides))
      return verbose ? fmt::format("strides are {}, expected ({})", tuple_text(stride.ptr()), fmt::join(g.strides, ", "))
                     : "x";
  }
  py::object rg = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, n.requires_grad));
  if ((rg.ptr() == Py_True) != g.requires_grad)
    return verbose ? fmt::format("requires_grad is {}, expected {}", rg.ptr() == Py_True, g.requires_grad) : "x";
  // Device last. `is_cpu` is a cheap bool; other devices compare the device's text.
  if (g.device == "cpu") {
    py::object cpu = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, n.is_cpu));
    if (cpu.ptr() == Py_True) return "";
  }
  std::string dev = device_of(t);
  if (dev != g.device) return verbose ? fmt::format("device is {}, expected {}", dev, g.device) : "x";
  return "";
}

bool GuardSet::matches(int64_t v, int64_t base, int64_t coeff) const {
  if (coeff == 0) return v == base;
  if (symbol_ >= 0) return v == base + coeff * symbol_;
  if ((v - base) % coeff != 0) return false;
  int64_t s = (v - base) / coeff;
  if (s < symbol_lo_ || s > symbol_hi_) return false;
  symbol_ = s;
  return true;
}

std::string GuardSet::check_forms(PyObject* tuple, const std::vector<int64_t>& base, const std::vector<int64_t>& coeff,
                                  const char* what, bool verbose) const {
  std::vector<int64_t> v;
  if (!read_int_tuple(tuple, v) || v.size() != base.size()) return verbose ? fmt::format("{} have another rank", what) : "x";
  for (size_t d = 0; d < v.size(); ++d)
    if (!matches(v[d], base[d], coeff[d])) {
      if (!verbose) return "x";
      if (coeff[d] == 0) return fmt::format("{} are {}, expected {} at dim {}", what, tuple_text(tuple), base[d], d);
      return symbol_ >= 0 ? fmt::format("{} are {}: dim {} is not {} + {}*s with s = {}", what, tuple_text(tuple), d,
                                        base[d], coeff[d], symbol_)
                          : fmt::format("{} are {}: dim {} gives s outside {}..{}", what, tuple_text(tuple), d,
                                        symbol_lo_, symbol_hi_);
    }
  return "";
}

void GuardSet::make_symbolic(int leaf, const std::vector<std::pair<int64_t, int64_t>>& sizes,
                             const std::vector<std::pair<int64_t, int64_t>>& strides) {
  for (auto& g : tensors_) {
    if (g.leaf != leaf) continue;
    g.sizes.clear();
    g.size_coeff.clear();
    g.strides.clear();
    g.stride_coeff.clear();
    for (auto [b, c] : sizes) {
      g.sizes.push_back(b);
      g.size_coeff.push_back(c);
    }
    for (auto [b, c] : strides) {
      g.strides.push_back(b);
      g.stride_coeff.push_back(c);
    }
  }
}

void GuardSet::make_symbolic_value(int leaf, int64_t base, int64_t coeff) {
  for (auto& g : values_)
    if (g.leaf == leaf) {
      g.symbolic = true;
      g.base = base;
      g.coeff = coeff;
    }
}

/// A symbolic int guard's value against `v`: "" when it holds.
std::string GuardSet::check_symbolic_value(const ValueGuard& g, PyObject* v, bool verbose) const {
  if (!PyLong_CheckExact(v)) return verbose ? "not an int" : "x";
  long long x = PyLong_AsLongLong(v);
  if (x == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return verbose ? "an int out of range" : "x";
  }
  if (matches(x, g.base, g.coeff)) return "";
  return verbose ? fmt::format("value is {}, expected {} + {}*s{}", x, g.base, g.coeff,
                               symbol_ >= 0 ? fmt::format(" with s = {}", symbol_) : "")
                 : "x";
}

int GuardSet::overlapping(const py::list& leaves) const {
  static PyObject* name = PyUnicode_InternFromString("data_ptr");
  auto ptr = [](PyObject* t) -> int64_t {
    PyObject* p = PyObject_CallMethodNoArgs(t, name);
    if (!p) {
      PyErr_Clear();
      return -1;
    }
    int64_t v = static_cast<int64_t>(reinterpret_cast<intptr_t>(PyLong_AsVoidPtr(p)));
    Py_DECREF(p);
    return v;
  };
  for (size_t k = 0; k < disjoint_.size(); ++k) {
    const auto& d = disjoint_[k];
    int64_t a = ptr(PyList_GET_ITEM(leaves.ptr(), d.i)), b = ptr(PyList_GET_ITEM(leaves.ptr(), d.j));
    if (a == -1 || b == -1) return static_cast<int>(k);
    if (a + d.lo_i < b + d.hi_j && b + d.lo_j < a + d.hi_i) return static_cast<int>(k);
  }
  return -1;
}

bool GuardSet::check(const py::list& leaves, bool grad_enabled) {
  symbol_ = -1;
  if (static_cast<size_t>(PyList_GET_SIZE(leaves.ptr())) != leaf_count_) return false;
  if (grad_enabled != grad_mode_) return false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    PyObject* t = PyList_GET_ITEM(leaves.ptr(), tensors_[i].leaf);
    if (!check_tensor(tensors_[i], t, false).empty()) {
      if (i > 0) std::swap(tensors_[i], tensors_[0]);  // check the usual culprit first next time
      PyErr_Clear();
      return false;
    }
  }
  for (const auto& id : identities_)
    if ((PyList_GET_ITEM(leaves.ptr(), id.i) == PyList_GET_ITEM(leaves.ptr(), id.j)) != id.same) return false;
  // After the tensor guards: the ranges assume the sizes and strides they checked.
  if (!disjoint_.empty() && overlapping(leaves) >= 0) return false;
  for (const auto& g : values_) {
    PyObject* v = PyList_GET_ITEM(leaves.ptr(), g.leaf);
    if (g.symbolic) {
      if (!check_symbolic_value(g, v, false).empty()) return false;
      continue;
    }
    if (reinterpret_cast<PyObject*>(Py_TYPE(v)) != g.type.ptr()) return false;
    if (g.type_only || v == g.value.ptr()) continue;
    if (PyFloat_CheckExact(v)) {
      // The trace baked this float in: -0.0 is not 0.0 there (x / s), and any NaN is every NaN.
      if (!same_double(PyFloat_AS_DOUBLE(v), PyFloat_AS_DOUBLE(g.value.ptr()))) return false;
      continue;
    }
    int eq = PyObject_RichCompareBool(v, g.value.ptr(), Py_EQ);
    if (eq != 1) {
      PyErr_Clear();
      return false;
    }
  }
  return true;
}

std::string GuardSet::explain(const py::list& leaves, bool grad_enabled) const {
  if (static_cast<size_t>(PyList_GET_SIZE(leaves.ptr())) != leaf_count_)
    return fmt::format("the call has {} leaves, expected {}", PyList_GET_SIZE(leaves.ptr()), leaf_count_);
  if (grad_enabled != grad_mode_) return fmt::format("grad mode is {}, expected {}", grad_enabled, grad_mode_);
  symbol_ = -1;
  for (const auto& id : identities_)
    if ((PyList_GET_ITEM(leaves.ptr(), id.i) == PyList_GET_ITEM(leaves.ptr(), id.j)) != id.same)
      return fmt::format("leaves {} and {} are {}the same tensor, expected {}", id.i, id.j, id.same ? "not " : "",
                         id.same ? "the same" : "distinct");
  for (const auto& g : tensors_) {
    std::string why = check_tensor(g, PyList_GET_ITEM(leaves.ptr(), g.leaf), true);
    if (!why.empty()) return fmt::format("leaf {}: {}", g.leaf, why);
  }
  for (const auto& g : values_) {
    py::handle v = PyList_GET_ITEM(leaves.ptr(), g.leaf);
    if (g.symbolic) {
      std::string why = check_symbolic_value(g, v.ptr(), true);
      if (!why.empty()) return fmt::format("leaf {}: {}", g.leaf, why);
      continue;
    }
    bool same_type = reinterpret_cast<PyObject*>(Py_TYPE(v.ptr())) == g.type.ptr();
    bool equal = g.type_only || !same_type ? same_type
                 : PyFloat_CheckExact(v.ptr())
                     ? same_double(PyFloat_AS_DOUBLE(v.ptr()), PyFloat_AS_DOUBLE(g.value.ptr()))
                     : v.equal(g.value);
    if (!same_type || !equal)
      return fmt::format("leaf {}: value is {}, expected {}", g.leaf, py::repr(v).cast<std::string>(),
                         py::repr(g.value).cast<std::string>());
  }
  if (!disjoint_.empty()) {
    int k = overlapping(leaves);
    if (k >= 0)
      return fmt::format("leaves {} and {} share memory (one is written in place), expected disjoint", disjoint_[k].i,
                         disjoint_[k].j);
  }
  return "";
}

std::vector<std::string> GuardSet::describe() const {
  std::vector<std::string> out;
  out.push_back(fmt::format("grad_mode == {}", grad_mode_));
  // A symbolic dim prints as its form over s (Note [Dynamic sizes]).
  auto forms = [](const std::vector<int64_t>& base, const std::vector<int64_t>& coeff) {
    std::vector<std::string> out;
    for (size_t d = 0; d < base.size(); ++d) {
      int64_t c = d < coeff.size() ? coeff[d] : 0;
      std::string term = c == 0 ? "" : c == 1 ? "s" : fmt::format("{}*s", c);
      out.push_back(c == 0 ? std::to_string(base[d]) : base[d] == 0 ? term : fmt::format("{}{:+}", term, base[d]));
    }
    return fmt::format("{}", fmt::join(out, ", "));
  };
  for (const auto& g : tensors_)
    out.push_back(fmt::format("leaf {}: {} {} on {}, sizes ({}), strides ({}), requires_grad={}", g.leaf,
                              py::str(g.type).cast<std::string>(), py::str(g.dtype).cast<std::string>(), g.device,
                              forms(g.sizes, g.size_coeff), forms(g.strides, g.stride_coeff), g.requires_grad));
  if (symbol_hi_ > 0) out.push_back(fmt::format("{} <= s <= {}, one s for every leaf", symbol_lo_, symbol_hi_));
  for (const auto& id : identities_)
    out.push_back(fmt::format("leaf {} is {}leaf {}", id.i, id.same ? "" : "not ", id.j));
  for (const auto& d : disjoint_) out.push_back(fmt::format("leaf {} does not overlap leaf {} in memory", d.i, d.j));
  for (const auto& g : values_)
    out.push_back(g.symbolic    ? fmt::format("leaf {}: an int == {}", g.leaf, forms({g.base}, {g.coeff}))
                  : g.type_only ? fmt::format("leaf {}: type is {}", g.leaf, py::str(g.type).cast<std::string>())
                                : fmt::format("leaf {}: == {}", g.leaf, py::repr(g.value).cast<std::string>()));
  return out;
}

}  // namespace kiln::py_bind
