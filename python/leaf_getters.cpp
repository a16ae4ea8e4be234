/// \file leaf_getters.cpp
/// Reads the values a compiled function needs besides its arguments (parameters, buffers,
/// closure and global tensors, guarded plain attributes such as `training`) on every call.
/// Each is a path: a root (an object, a closure cell, or a dict entry) and attribute names.
/// Walking a module's attribute path through Python costs ~1.5 us per parameter (Module's
/// __getattr__ is Python); here each step is a dict lookup. Anything unusual (a class
/// attribute or property of that name, a missing entry, a custom __getattr__) takes the path's
/// Python getter instead, so the value and any error are exactly what attribute access gives.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "python/bindings.h"

namespace kiln::py_bind {
namespace {

class LeafGetters {
 public:
  /// `module_getattr`: torch.nn.Module.__getattr__ (types using it keep parameters, buffers and
  /// submodules in the _parameters/_buffers/_modules dicts of the instance).
  explicit LeafGetters(py::object module_getattr) : module_getattr_(std::move(module_getattr)) {
    stores_ = {py::str("_parameters"), py::str("_buffers"), py::str("_modules")};
    getattr_name_ = py::str("__getattr__");
  }

  /// kind: 0 the root object itself, 1 a closure cell's contents, 2 root[key] of a dict.
  void add(int kind, py::object root, py::object key, const std::vector<std::string>& names, py::object fallback) {
    Path p{kind, std::move(root), std::move(key), {}, std::move(fallback)};
    for (const auto& n : names) p.names.push_back(py::reinterpret_steal<py::object>(PyUnicode_InternFromString(n.c_str())));
    paths_.push_back(std::move(p));
  }

  py::list read() {
    py::list out(paths_.size());
    for (size_t i = 0; i < paths_.size(); ++i) {
      PyObject* v = fast(paths_[i]);
      if (!v) {
        PyErr_Clear();
        out[i] = paths_[i].fallback();
      } else {
        PyList_SET_ITEM(out.ptr(), i, v);  // steals the reference
      }
    }
    return out;
  }

 private:
  struct Path {
    int kind;
    py::object root, key;
    std::vector<py::object> names;
    py::object fallback;
  };

  /// A new reference, or nullptr (with or without an error set) to take the slow path.
  PyObject* fast(const Path& p) const {
    PyObject* cur = nullptr;
    if (p.kind == 0) {
      cur = p.root.ptr();
    } else if (p.kind == 1) {
      if (!PyCell_Check(p.root.ptr())) return nullptr;
      cur = PyCell_GET(p.root.ptr());
    } else {
      if (!PyDict_Check(p.root.ptr())) return nullptr;
      cur = PyDict_GetItemWithError(p.root.ptr(), p.key.ptr());
    }
    if (!cur) return nullptr;
    Py_INCREF(cur);
    for (const auto& name : p.names) {
      PyObject* next = attr(cur, name.ptr());
      Py_DECREF(cur);
      if (!next) return nullptr;
      cur = next;
    }
    return cur;
  }

  /// obj.name by dict lookups where that is what Python would do, else nullptr.
  PyObject* attr(PyObject* obj, PyObject* name) const {
    PyTypeObject* tp = Py_TYPE(obj);
    if (_PyType_Lookup(tp, name)) return nullptr;  // a class attribute or descriptor decides
    PyObject* dict = PyObject_GenericGetDict(obj, nullptr);
    if (!dict) return nullptr;
    PyObject* v = PyDict_GetItemWithError(dict, name);
    if (!v && !PyErr_Occurred() && _PyType_Lookup(tp, getattr_name_.ptr()) == module_getattr_.ptr()) {
      for (const auto& store : stores_) {
        PyObject* s = PyDict_GetItemWithError(dict, store.ptr());
        if (s && PyDict_Check(s) && (v = PyDict_GetItemWithError(s, name))) break;
      }
    }
    Py_XINCREF(v);
    Py_DECREF(dict);
    return v;
  }

  py::object module_getattr_, getattr_name_;
  std::vector<py::object> stores_;
  std::vector<Path> paths_;
};

}  // namespace

void define_leaf_getters(py::module_& m) {
  py::class_<LeafGetters>(m, "LeafGetters")
      .def(py::init<py::object>())
      .def("add", &LeafGetters::add)
      .def("read", &LeafGetters::read);
}

}  // namespace kiln::py_bind
