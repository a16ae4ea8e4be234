/// \file guard_set.h
/// Guards of one compiled entry, checked in C++ on every call against the flattened call
/// leaves (tensors and plain Python values). `check` allocates nothing and stops at the first
/// mismatch; `explain` says which leaf, which property, expected and actual. Guards that failed
/// before are checked first on later calls (most misses repeat).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace kiln::py_bind {
namespace py = pybind11;

struct TensorGuard {
  int leaf;
  py::object type;   ///< exact Python type (torch.Tensor, nn.Parameter, ...)
  py::object dtype;  ///< the torch.dtype object (singletons: compared by identity)
  std::string device;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  bool requires_grad;
  /// A dynamic program's guard (Note [Dynamic sizes]): size d must be sizes[d] +
  /// size_coeff[d] * s, stride d strides[d] + stride_coeff[d] * s, for one symbol s per call.
  /// Empty: the sizes and strides are constants.
  std::vector<int64_t> size_coeff, stride_coeff;
};

struct ValueGuard {
  int leaf;
  py::object type;
  py::object value;  ///< compared by identity, then ==
  bool type_only = false;  ///< objects kiln cannot compare: only their type is checked
  /// A dynamic program's int argument: an int equal to base + coeff * s (type exactly int).
  bool symbolic = false;
  int64_t base = 0, coeff = 0;
};

class GuardSet {
 public:
  void add_tensor(TensorGuard g) { tensors_.push_back(std::move(g)); }
  void add_value(ValueGuard g) { values_.push_back(std::move(g)); }
  void set_grad_mode(bool enabled) { grad_mode_ = enabled; }
  /// Leaves i and j must be the same object (`same`) or must not be: the trace read them as one
  /// value (or wrote one of them in place).
  void add_identity(int i, int j, bool same) { identities_.push_back({i, j, same}); }
  /// Leaves i and j (one is written in place) must not share memory: distinct objects can
  /// still be views of one storage. Each range is [lo, hi) in bytes around the tensor's
  /// data pointer, from its (guarded) sizes and strides.
  void add_disjoint(int i, int j, int64_t lo_i, int64_t hi_i, int64_t lo_j, int64_t hi_j) {
    disjoint_.push_back({i, j, lo_i, hi_i, lo_j, hi_j});
  }
  /// True when every guard holds for `leaves` under grad mode `grad_enabled`.
  bool check(const py::list& leaves, bool grad_enabled);
  /// The first failing guard in words, or "" when all hold.
  std::string explain(const py::list& leaves, bool grad_enabled) const;
  /// One line per guard, for kiln.explain and KILN_LOG=guards.
  std::vector<std::string> describe() const;
  size_t leaf_count() const { return leaf_count_; }
  /// The range of the symbol s of the symbolic guards below: one value across a call.
  void set_symbol_range(int64_t lo, int64_t hi) {
    symbol_lo_ = lo;
    symbol_hi_ = hi;
  }
  /// Makes leaf `leaf`'s tensor guard symbolic: `sizes`/`strides` are (base, coeff) pairs of
  /// the forms `base + coeff * s`.
  void make_symbolic(int leaf, const std::vector<std::pair<int64_t, int64_t>>& sizes,
                     const std::vector<std::pair<int64_t, int64_t>>& strides);
  /// Makes leaf `leaf`'s value guard symbolic: an int equal to base + coeff * s.
  void make_symbolic_value(int leaf, int64_t base, int64_t coeff);
  /// The symbol's value the last successful check() found (-1: none).
  int64_t symbol() const { return symbol_; }
  void set_leaf_count(size_t n) { leaf_count_ = n; }

 private:
  std::string check_tensor(const TensorGuard& g, PyObject* t, bool verbose) const;
  /// Whether `v` is `base + coeff * s`, fixing s on its first use in a check.
  bool matches(int64_t v, int64_t base, int64_t coeff) const;
  /// A symbolic tensor guard's sizes or strides against `tuple`; "" when they hold.
  std::string check_forms(PyObject* tuple, const std::vector<int64_t>& base, const std::vector<int64_t>& coeff,
                          const char* what, bool verbose) const;
  std::string check_symbolic_value(const ValueGuard& g, PyObject* v, bool verbose) const;
  mutable int64_t symbol_ = -1;
  int64_t symbol_lo_ = 0, symbol_hi_ = 0;
  std::vector<TensorGuard> tensors_;
  std::vector<ValueGuard> values_;
  struct Identity {
    int i, j;
    bool same;
  };
  std::vector<Identity> identities_;
  struct Disjoint {
    int i, j;
    int64_t lo_i, hi_i, lo_j, hi_j;
  };
  std::vector<Disjoint> disjoint_;
  /// The first pair of leaves whose memory overlaps, or -1.
  int overlapping(const py::list& leaves) const;
  bool grad_mode_ = true;
  size_t leaf_count_ = 0;
};

/// Reads a tensor's sizes or strides tuple into `out`; false if it is not a tuple of ints.
bool read_int_tuple(PyObject* tuple, std::vector<int64_t>& out);

}  // namespace kiln::py_bind
