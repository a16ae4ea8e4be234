/// \file bind_cpu.cpp
/// The LLVM CPU backend's bindings: compile a captured graph, run it under guards (Entry), and
/// inspect its kernels (LLVM IR, assembly, loop IR, time).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "capture/graph_builder.h"
#include "codegen_cpu/cpu_codegen.h"
#include "passes/partition_joint.h"
#include "python/bindings.h"
#include "python/guard_set.h"
#include "runtime/blas.h"
#include "runtime/compile_cpu.h"
#include "runtime/compile_training.h"
#include "runtime/dynamic_training.h"
#include "runtime/dynamic_program.h"
#include "runtime/gemm.h"
#include "support/config.h"
#include "support/error.h"

namespace kiln::py_bind {
namespace {

/// Programs touching at least this many elements release the GIL while they run.
constexpr int64_t kReleaseGilWork = 16384;

/// A compiled graph (runtime/compile_cpu.h) plus the work estimate the bindings schedule by.
struct Program : runtime::CompiledCpuGraph {
  Program() = default;
  explicit Program(runtime::CompiledCpuGraph g) : runtime::CompiledCpuGraph(std::move(g)) {}
  /// Elements the program's kernels touch per call (a size estimate for scheduling decisions).
  int64_t work() const {
    if (work_ < 0) {
      work_ = 0;
      const auto& p = program->program();
      for (const auto& k : p.kernels) work_ += k.outer_extent() * k.inner_work();
      for (const auto& g : p.gemms) work_ += p.buffers[g.out].storage_numel();
      if (!p.externs.empty()) work_ = INT64_MAX;  // fallbacks run Python
    }
    return work_;
  }
  mutable int64_t work_ = -1;
};

Program compile_graph(const capture::GraphBuilder& builder, const std::string& debug_dir) {
  return Program(runtime::compile_cpu_graph(builder.graph(), runtime::cpu_options_from_knobs(debug_dir)));
}

/// A joint graph compiled for training: the forward and backward programs and the partition
/// that links them (which forward outputs are saved values, which leaves the backward reads).
struct TrainingProgram {
  Program forward, backward;
  passes::Partition partition;
  std::string joint_text, partition_text;
};

TrainingProgram compile_training(const capture::GraphBuilder& builder, int forward_outputs,
                                 const std::vector<int>& tangents, int backward_start, bool recompute,
                                 const std::string& debug_dir) {
  passes::JointSpec spec{forward_outputs, tangents, backward_start};
  passes::PartitionOptions popts;
  popts.recompute = recompute;
  runtime::CompiledCpuTraining t =
      runtime::compile_cpu_training(builder.graph(), spec, popts, runtime::cpu_options_from_knobs(debug_dir));
  TrainingProgram out;
  out.partition_text = passes::describe(builder.graph(), t.partition);
  out.forward = Program(std::move(t.forward));
  out.backward = Program(std::move(t.backward));
  out.partition = std::move(t.partition);
  out.joint_text = std::move(t.joint_text);
  return out;
}

void* data_ptr(PyObject* t) {
  static PyObject* name = PyUnicode_InternFromString("data_ptr");
  py::object p = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(t, name));
  if (!p) throw py::error_already_set();
  return PyLong_AsVoidPtr(p.ptr());
}

/// What the fast path calls: an entry that checks its guards and runs (see Entry::call).
struct GuardedEntry {
  virtual ~GuardedEntry() = default;
  virtual py::object call(const py::list& leaves, bool grad_enabled) = 0;
};

/// One cache entry of a compiled function: guards, program, the output allocation recipe, and
/// the fallback table (Python callables running the ops kiln runs eagerly inside the program).
class Entry : public GuardedEntry {
 public:
  /// `lazy_outputs`: allocate each output just before the step that first writes it, as
  /// programs with fallback steps allocate every buffer (a training step's: its backward's
  /// gradients then do not all sit in memory from its first step on, as eager's do not).
  Entry(std::shared_ptr<py_bind::GuardSet> guards, Program program, py::list fallbacks, bool lazy_outputs = false)
      : guards_(std::move(guards)),
        program_(std::move(program)),
        fallbacks_(std::move(fallbacks)),
        lazy_outputs_(lazy_outputs) {
    const auto& p = program_.program->program();
    py::dict& dtypes = torch_handles().dtypes;
    for (const auto& b : p.buffers) {
      py::tuple sizes(b.sizes.size()), strides(b.strides.size());
      for (size_t i = 0; i < b.sizes.size(); ++i) {
        sizes[i] = py::int_(b.sizes[i]);
        strides[i] = py::int_(b.strides[i]);
      }
      sizes_.push_back(sizes);
      strides_.push_back(strides);
      dtype_.push_back(dtypes[py::str(ir::dtype_name(b.dtype))]);
    }
    // A fallback's results become its output buffers as they are: allocating those up front
    // would only be thrown away (and costs fresh pages on every call).
    std::vector<bool> from_extern(p.buffers.size(), false);
    for (const auto& e : p.externs)
      for (int b : e.outputs) from_extern[b] = true;
    allocate_upfront_.assign(p.buffers.size(), false);
    for (size_t b = 0; b < p.buffers.size(); ++b)
      allocate_upfront_[b] = (p.buffers[b].kind == ir::BufferKind::Output || p.buffers[b].kind == ir::BufferKind::Shared) &&
                             !from_extern[b];
    plan_buffer_lifetimes(p);
    // Operands passed as views of an argument: their as_strided arguments, built once.
    for (const auto& e : p.externs) {
      std::vector<ViewArgs> va(e.inputs.size());
      for (size_t k = 0; k < e.views.size(); ++k)
        if (e.views[k].is_view) va[k] = ViewArgs(e.views[k]);
      view_args_.push_back(std::move(va));
    }
    // Outputs returned as views of an argument: the same, per output.
    output_views_.resize(p.outputs.size());
    for (size_t j = 0; j < p.outputs.size(); ++j)
      if (p.outputs[j].kind == ir::OutputSpec::Kind::InputView) output_views_[j] = ViewArgs(p.outputs[j].view);
  }

  /// Runs on `leaves` if the guards hold: returns the output list, None on a guard miss, or
  /// False when the program flagged an error (integer division by zero, a failing fallback op)
  /// and eager must redo the call.
  py::object call(const py::list& leaves, bool grad_enabled) override {
    if (!guards_->check(leaves, grad_enabled)) return py::none();
    return run(leaves, {});
  }

  /// Runs on `leaves` without checking guards: the caller knows they hold (a training
  /// backward's leaves are what its forward saved plus gradients of the forward's outputs).
  /// Returns the output list, or False as call() does. `consumable`: leaf indices the call may
  /// drop after their last use (their list items become None): a backward frees each saved
  /// activation once it has read it, as eager's backward frees saved tensors node by node.
  py::object run(const py::list& leaves, const std::vector<int>& consumable) {
    failure_.clear();
    data_dependent_failure_ = false;
    const auto& p = program_.program->program();
    std::vector<void*> ptrs(p.buffers.size(), nullptr);
    std::vector<py::object> tensors(p.buffers.size());
    std::vector<bool> drop(p.buffers.size(), false);
    for (size_t i = 0; i < p.buffers.size(); ++i) {
      const auto& b = p.buffers[i];
      if (b.kind == ir::BufferKind::Input) {
        tensors[i] = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(leaves.ptr(), b.index));
        ptrs[i] = data_ptr(tensors[i].ptr());
        if (releasable_input_[i] && std::find(consumable.begin(), consumable.end(), b.index) != consumable.end()) {
          drop[i] = true;
          Py_INCREF(Py_None);
          PyList_SetItem(leaves.ptr(), b.index, Py_None);  // the call holds the only reference now
        }
      } else if (allocate_upfront_[i]) {
        tensors[i] = torch_handles().empty_strided(sizes_[i], strides_[i], py::arg("dtype") = dtype_[i]);
        ptrs[i] = data_ptr(tensors[i].ptr());
      }
    }
    runtime::CompiledProgram::ExternFn run_extern = [&](const ir::ExternCall& call, std::vector<void*>& ps) {
      py::gil_scoped_acquire gil;
      return run_fallback(call, tensors, ps);
    };
    // Buffers are allocated just before the step that first writes them and dropped after the
    // last step that reads them, as eager allocates and frees: memory freed a moment ago is
    // reused while it is still in cache (allocating everything up front made matmul outputs
    // land in cold memory, +10-15% on each addmm of a block).
    bool dropping = std::find(drop.begin(), drop.end(), true) != drop.end();
    runtime::CompiledProgram::StepHook hook = [&](size_t si, bool before, std::vector<void*>& ps) {
      const auto& list = before ? alloc_at_[si] : release_at_[si];
      bool inputs = !before && dropping && !input_release_at_[si].empty();
      if (list.empty() && !inputs) return;
      py::gil_scoped_acquire gil;
      for (int b : list) {
        if (before) {
          tensors[b] = torch_handles().empty_strided(sizes_[b], strides_[b], py::arg("dtype") = dtype_[b]);
          ps[b] = data_ptr(tensors[b].ptr());
        } else {
          tensors[b] = py::none();
          ps[b] = nullptr;
        }
      }
      if (inputs)
        for (int b : input_release_at_[si])
          if (drop[b]) {
            tensors[b] = py::none();
            ps[b] = nullptr;
          }
    };
    const runtime::CompiledProgram::StepHook* h = has_lifetimes_ || dropping ? &hook : nullptr;
    bool ok;
    if (program_.work() >= kReleaseGilWork) {
      // Other Python threads run while the kernels do; for tiny programs the release and
      // re-acquire would cost more than the kernels.
      py::gil_scoped_release release;
      ok = program_.program->run(ptrs, p.externs.empty() ? nullptr : run_extern, h ? *h : nullptr);
    } else {
      ok = program_.program->run(ptrs, p.externs.empty() ? nullptr : run_extern, h ? *h : nullptr);
    }
    if (!ok) {
      if (failure_.empty())
        failure_ = "a compiled kernel met an integer division by zero or an index out of range: eager redoes the call "
                   "(and raises its error)";
      return py::bool_(false);
    }
    py::list outs(p.outputs.size());
    for (size_t j = 0; j < p.outputs.size(); ++j) {
      const auto& o = p.outputs[j];
      if (o.kind == ir::OutputSpec::Kind::InputView)
        outs[j] = output_views_[j].of(leaves[o.index]);
      else
        outs[j] = o.kind == ir::OutputSpec::Kind::Buffer ? tensors[o.index] : leaves[o.index];
    }
    return outs;
  }

  std::shared_ptr<py_bind::GuardSet> guards() const { return guards_; }
  /// Why the last call returned False, for kiln.counters() and kiln.explain.
  const std::string& last_failure() const { return failure_; }
  /// Whether it returned False because a fallback op's result had another shape than at capture.
  bool failed_on_data_dependent_shape() const { return data_dependent_failure_; }
  const Program& program() const { return program_; }

 private:
  /// Which buffers each step allocates first and which it reads last (see call()). Only
  /// programs with fallback steps use this: their buffers are torch tensors the size of
  /// activations, and their steps interleave with eager ops that allocate too.
  void plan_buffer_lifetimes(const ir::KernelProgram& p) {
    size_t nb = p.buffers.size(), ns = p.steps.size();
    alloc_at_.assign(ns, {});
    release_at_.assign(ns, {});
    input_release_at_.assign(ns, {});
    releasable_input_.assign(nb, false);
    if (p.externs.empty() && !lazy_outputs_) return;
    std::vector<ir::BufferLifetime> life = ir::buffer_lifetimes(p, /*epilogues_at_product=*/false);
    std::vector<bool> returned(nb, false);  // a fallback's result can be an output (kind Extern)
    for (const auto& o : p.outputs)
      if (o.kind == ir::OutputSpec::Kind::Buffer) returned[o.index] = true;
    // Inputs a call may drop after their last reader (run's `consumable`): never one an output
    // returns or views.
    std::set<int> returned_leaves;
    for (const auto& o : p.outputs)
      if (o.kind != ir::OutputSpec::Kind::Buffer) returned_leaves.insert(o.index);
    for (size_t b = 0; b < nb && lazy_outputs_; ++b)
      if (p.buffers[b].kind == ir::BufferKind::Input && life[b].last >= 0 && !returned_leaves.count(p.buffers[b].index)) {
        input_release_at_[life[b].last].push_back(static_cast<int>(b));
        releasable_input_[b] = true;
      }
    for (size_t b = 0; b < nb; ++b) {
      auto kind = p.buffers[b].kind;
      if (allocate_upfront_[b] && life[b].first >= 0) {  // allocated by the step hook instead
        alloc_at_[life[b].first].push_back(static_cast<int>(b));
        allocate_upfront_[b] = false;
        has_lifetimes_ = true;
      }
      // Intermediates only (never an output or an argument): dropped after their last reader,
      // or right after they are made when nothing reads them.
      bool intermediate = (kind == ir::BufferKind::Shared || kind == ir::BufferKind::Extern) && !returned[b];
      if (intermediate && life[b].last >= 0) {
        release_at_[life[b].last].push_back(static_cast<int>(b));
        has_lifetimes_ = true;
      }
    }
  }

  /// Calls fallback `call.table_index` on its operand tensors and binds its results, in the
  /// layout recorded at capture (copying when eager gave another layout this time).
  bool run_fallback(const ir::ExternCall& call, std::vector<py::object>& tensors, std::vector<void*>& ptrs) {
    try {
      py::tuple args(call.inputs.size());
      const auto& va = view_args_[&call - program_.program->program().externs.data()];
      for (size_t i = 0; i < call.inputs.size(); ++i) {
        const py::object& t = tensors[call.inputs[i]];
        args[i] = i < va.size() && va[i].used ? va[i].of(t) : t;
      }
      py::object result = fallbacks_[call.table_index](*args);
      std::vector<py::object> results;
      if (py::isinstance<py::tuple>(result) || py::isinstance<py::list>(result)) {
        for (py::handle h : result) results.push_back(py::reinterpret_borrow<py::object>(h));
      } else {
        results.push_back(result);
      }
      if (results.size() < call.outputs.size()) return false;
      for (size_t k = 0; k < call.outputs.size(); ++k) {
        int buf = call.outputs[k];
        py::object t = results[k];
        py::object dtype = t.attr("dtype"), shape = t.attr("shape"), stride = t.attr("stride")();
        if (!dtype.is(dtype_[buf]) || !shape.equal(sizes_[buf])) {
          // A data-dependent shape (x[mask], nonzero) the kernels after it were compiled for.
          // (The message names only what the capture saw: one reason per program, not per call.)
          failure_ = py::str("fallback op {} returned another shape or dtype than its {} {} at capture (a "
                             "data-dependent result): the call runs eagerly")
                         .format(fallbacks_[call.table_index], dtype_[buf], sizes_[buf]);
          data_dependent_failure_ = true;
          return false;
        }
        if (!stride.equal(strides_[buf])) {
          py::object fixed = torch_handles().empty_strided(sizes_[buf], strides_[buf], py::arg("dtype") = dtype_[buf]);
          fixed.attr("copy_")(t);
          t = fixed;
        }
        tensors[buf] = t;
        ptrs[buf] = data_ptr(t.ptr());
      }
      return true;
    } catch (py::error_already_set& e) {
      // The op raised for these inputs: the caller reruns the call eagerly, which raises it.
      failure_ = "fallback op " + std::string(py::str(fallbacks_[call.table_index])) + " raised (" + std::string(e.what()).substr(0, 200) +
                 "): eager redoes the call";
      return false;
    }
  }

  std::shared_ptr<py_bind::GuardSet> guards_;
  Program program_;
  std::string failure_;  // why the last call returned False (kiln.counters()'s reason)
  bool data_dependent_failure_ = false;  // ... because of a fallback op's data-dependent shape
  py::list fallbacks_;
  std::vector<py::object> sizes_, strides_, dtype_;  // per buffer
  std::vector<bool> allocate_upfront_;                // per buffer: call() allocates it before any step
  std::vector<std::vector<int>> alloc_at_, release_at_;  // per step
  bool has_lifetimes_ = false;
  bool lazy_outputs_ = false;
  std::vector<std::vector<int>> input_release_at_;  // per step: input buffers last read there
  std::vector<bool> releasable_input_;               // per buffer
  /// A strided view of an argument (an extern operand, an output), its as_strided arguments
  /// built once.
  struct ViewArgs {
    ViewArgs() = default;
    explicit ViewArgs(const ir::ExternView& v)
        : used(true), sizes(py::cast(v.sizes)), strides(py::cast(v.strides)), offset(v.offset) {}
    /// The view of tensor `t` (as_strided's offset counts from the storage's start, the
    /// view's from the tensor's first element).
    py::object of(py::handle t) const {
      int64_t base = t.attr("storage_offset")().cast<int64_t>();
      return t.attr("as_strided")(sizes, strides, base + offset);
    }
    bool used = false;
    py::object sizes, strides;
    int64_t offset = 0;
  };
  std::vector<std::vector<ViewArgs>> view_args_;      // per extern, per operand
  std::vector<ViewArgs> output_views_;                // per output (InputView outputs only)
};

/// A dynamic program (Note [Dynamic sizes]) and the guards whose symbolic sizes give
/// its symbol s, plus the program of the first size it ran at (what inspection shows).
struct DynamicProgram {
  std::shared_ptr<const runtime::DynamicCpuProgram> dynamic;
  Program first;  ///< the instance at the size of the capture that made it dynamic
};

DynamicProgram compile_dynamic(const runtime::GraphTemplate& t, const std::string& debug_dir) {
  runtime::CpuCompileOptions opts = runtime::cpu_options_from_knobs(debug_dir);
  DynamicProgram out;
  out.dynamic = std::make_shared<runtime::DynamicCpuProgram>(t, opts);
  std::string why;
  runtime::CompiledCpuGraph g;
  g.program = out.dynamic->at(t.seen[1], &why);
  KILN_UNSUPPORTED_IF(!g.program, "the dynamic program is not valid at the captured size: {}", why);
  g.timings = out.dynamic->timings();
  g.graph_text = ir::print(t.graph);
  g.compile_ms = out.dynamic->compile_ms();
  out.first = Program(std::move(g));
  return out;
}

/// A dynamic training step (runtime/dynamic_training.h) and its step at the size of the capture
/// that made it dynamic (what inspection shows).
struct DynamicTraining {
  std::shared_ptr<const runtime::DynamicCpuTraining> dynamic;
  TrainingProgram first;
};

/// The step of `t` at `s` as a TrainingProgram, or nothing with `why` set.
std::optional<TrainingProgram> training_at(const runtime::DynamicCpuTraining& t, int64_t s, std::string* why) {
  std::optional<runtime::TrainingInstance> in = t.at(s, why);
  if (!in) return std::nullopt;
  TrainingProgram out;
  const ir::Graph& joint = t.graph_template().graph;
  out.partition_text = passes::describe(joint, in->partition);
  runtime::CompiledCpuGraph f, b;
  f.program = in->forward;
  f.graph_text = ir::print(in->partition.forward);
  b.program = in->backward;
  b.graph_text = ir::print(in->partition.backward);
  out.forward = Program(std::move(f));
  out.backward = Program(std::move(b));
  out.partition = std::move(in->partition);
  return out;
}

DynamicTraining compile_dynamic_training(const runtime::GraphTemplate& joint, int forward_outputs,
                                         const std::vector<int>& tangents, int backward_start, bool recompute,
                                         const std::string& debug_dir) {
  passes::PartitionOptions popts;
  popts.recompute = recompute;
  DynamicTraining out;
  out.dynamic = std::make_shared<runtime::DynamicCpuTraining>(
      joint, passes::JointSpec{forward_outputs, tangents, backward_start}, popts,
      runtime::cpu_options_from_knobs(debug_dir));
  std::string why;
  std::optional<TrainingProgram> first = training_at(*out.dynamic, joint.seen[1], &why);
  KILN_UNSUPPORTED_IF(!first, "the dynamic training step is not valid at the captured size: {}", why);
  out.first = std::move(*first);
  out.first.joint_text = ir::print(joint.graph);
  out.first.forward.timings = out.dynamic->timings();
  out.first.forward.compile_ms = out.dynamic->compile_ms();
  return out;
}

/// A compiled function's entry for a dynamic program: checks the symbolic guards, then runs
/// the program's instance at the symbol's value (made on the first call at that value).
class DynamicEntry : public GuardedEntry {
 public:
  DynamicEntry(std::shared_ptr<py_bind::GuardSet> guards, DynamicProgram program)
      : guards_(std::move(guards)), program_(std::move(program)) {}

  /// As Entry::call. A size whose graph is not valid (a slice the captures clamped) misses, so
  /// the caller specialises on it.
  py::object call(const py::list& leaves, bool grad_enabled) override {
    if (!guards_->check(leaves, grad_enabled)) return py::none();
    // Held for the call: another thread may replace the instances while this one runs with
    // the GIL released.
    std::shared_ptr<Entry> e = instance(guards_->symbol());
    if (!e) return py::none();
    last_ = e;
    return e->run(leaves, {});
  }

  const std::string& last_failure() const {
    static const std::string none;
    return last_ ? last_->last_failure() : none;
  }
  std::shared_ptr<py_bind::GuardSet> guards() const { return guards_; }
  size_t instances() const { return instances_.size(); }
  const std::map<int64_t, std::string>& refused() const { return refused_; }

 private:
  /// Instances kept at once (their arena plans and output recipes; the arenas themselves come
  /// from one pool, runtime/arena_pool.h).
  static constexpr size_t kMaxInstances = 32;

  std::shared_ptr<Entry> instance(int64_t s) {
    auto it = instances_.find(s);
    if (it != instances_.end()) return it->second;
    if (refused_.count(s)) return nullptr;
    std::string why;
    runtime::CompiledCpuGraph g;
    g.program = program_.dynamic->at(s, &why);
    if (!g.program) {
      if (refused_.size() >= 1024) refused_.clear();  // bounded: they are recomputed when met again
      refused_[s] = why;
      return nullptr;
    }
    if (instances_.size() >= kMaxInstances) instances_.clear();
    // No fallbacks: a program with fallback ops is never dynamic (ir/kernel_template.cpp).
    return instances_[s] = std::make_shared<Entry>(guards_, Program(std::move(g)), py::list());
  }

  std::shared_ptr<py_bind::GuardSet> guards_;
  DynamicProgram program_;
  std::map<int64_t, std::shared_ptr<Entry>> instances_;
  std::map<int64_t, std::string> refused_;  // sizes whose graph is not valid, and why
  std::shared_ptr<Entry> last_;  // the instance of the last call (its failure, for the counters)
};

/// The per-call fast path of a compiled function for its most common shape of call: positional
/// torch.Tensor arguments only, no captured tensors or guarded plain values, no mutation, and a
/// result that is one tensor or a flat tuple of them. Everything else goes through Python.
class FastPath {
 public:
  FastPath(py::object tensor_type, py::object is_grad_enabled, py::object get_default_dtype, py::object miss)
      : tensor_type_(std::move(tensor_type)),
        is_grad_enabled_(std::move(is_grad_enabled)),
        get_default_dtype_(std::move(get_default_dtype)),
        miss_(std::move(miss)) {}

  /// `tuple_result`: return the outputs as a tuple instead of the first output.
  void add(size_t nargs, std::shared_ptr<GuardedEntry> entry, bool tuple_result) {
    entries_.push_back({nargs, std::move(entry), tuple_result});
  }
  void clear() { entries_.clear(); }
  /// Calls served here since the last reset, over every compiled function (kiln.counters()).
  static int64_t& hits() {
    static int64_t h = 0;
    return h;
  }

  /// The result, or the `miss` object (the Python path takes over, also when eager must redo
  /// the call).
  py::object call(const py::args& args) {
    size_t n = args.size();
    PyObject* type = tensor_type_.ptr();
    for (size_t i = 0; i < n; ++i)
      if (reinterpret_cast<PyObject*>(Py_TYPE(PyTuple_GET_ITEM(args.ptr(), i))) != type) return miss_;
    py::list leaves(n + 1);
    for (size_t i = 0; i < n; ++i) {
      PyObject* a = PyTuple_GET_ITEM(args.ptr(), i);
      Py_INCREF(a);
      PyList_SET_ITEM(leaves.ptr(), i, a);
    }
    leaves[n] = get_default_dtype_();
    bool grad = is_grad_enabled_().ptr() == Py_True;
    for (auto& e : entries_) {
      if (e.nargs != n) continue;
      py::object out = e.entry->call(leaves, grad);
      if (out.is_none()) continue;
      if (!PyList_Check(out.ptr())) return miss_;  // False: redo the call eagerly (Python path)
      ++hits();
      if (e.tuple_result) return py::tuple(out);
      return py::reinterpret_borrow<py::object>(PyList_GET_ITEM(out.ptr(), 0));
    }
    return miss_;
  }

 private:
  struct Item {
    size_t nargs;
    std::shared_ptr<GuardedEntry> entry;
    bool tuple_result;
  };
  py::object tensor_type_, is_grad_enabled_, get_default_dtype_, miss_;
  std::vector<Item> entries_;
};

py::list kernel_info(const Program& prog) {
  py::list out;
  const auto& p = prog.program->program();
  const auto& code = prog.program->code();
  for (size_t k = 0; k < p.kernels.size(); ++k) {
    py::dict d;
    d["name"] = p.kernels[k].name;
    d["symbol"] = code.symbols[k];
    d["loop_ir"] = ir::print(p.kernels[k]);
    std::string src;
    for (const auto& [name, text] : code.text.function_ir)
      if (name == code.symbols[k]) src = text;
    d["source"] = src;
    d["time_ns"] = prog.program->kernel_ns()[k];
    out.append(d);
  }
  return out;
}

/// The assembly of one kernel, cut from the module's assembly.
std::string kernel_asm(const Program& prog, const std::string& symbol) {
  std::string all = cpu::ir_to_asm(prog.program->code().text.module_ir);
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
      .def_property_readonly("fusion_log", [](const Program& p) { return p.program->program().fusion_log; })
      .def_property_readonly("loop_ir", [](const Program& p) { return ir::print(p.program->program()); })
      .def_property_readonly("llvm_ir", [](const Program& p) { return p.program->code().text.module_ir; })
      .def_property_readonly("calls", [](const Program& p) { return p.program->calls(); })
      .def_property_readonly("arena_bytes", [](const Program& p) { return p.program->arena_bytes(); },
                             "bytes of the temporaries one call holds at most (Note: runtime/arena_plan.h)")
      .def_property_readonly("gemms",
                             [](const Program& p) {
                               std::vector<std::string> out;
                               for (const auto& g : p.program->program().gemms) out.push_back(runtime::describe_gemm(g));
                               return out;
                             })
      .def_property_readonly("gemm_time_ns", [](const Program& p) { return p.program->gemm_ns(); })
      .def("kernels", &kernel_info)
      .def("kernel_asm", &kernel_asm)
      .def("output_kernel", [](const Program& prog, int j) -> std::string {
        // The kernel (or fallback) that writes output j: where a divergence shows first.
        const auto& p = prog.program->program();
        const auto& o = p.outputs.at(j);
        if (o.kind != ir::OutputSpec::Kind::Buffer) return "(an argument)";
        for (const auto& k : p.kernels)
          for (const auto& ph : k.phases)
            for (const auto& st : ph.stores)
              if (st.buffer == o.index) return k.name + "  // " + k.provenance;
        for (const auto& e : p.externs)
          for (int b : e.outputs)
            if (b == o.index) return e.name;
        for (const auto& g : p.gemms)
          if (g.out == o.index) return g.name;
        return "(no kernel: empty)";
      })
      .def("set_profiling", [](Program& p, bool on) { p.program->set_profiling(on); });

  // Compiles release the GIL: a background compile (Note [Background compiles] in
  // python/kiln/_background.py) runs while the calling thread keeps running Python.
  m.def("compile_graph", &compile_graph, py::arg("builder"), py::arg("debug_dir") = "",
        py::call_guard<py::gil_scoped_release>());

  py::class_<TrainingProgram> training(m, "TrainingProgram");
  training.def_readonly("forward", &TrainingProgram::forward)
      .def_readonly("backward", &TrainingProgram::backward)
      .def_readonly("joint_graph", &TrainingProgram::joint_text)
      .def_readonly("partition", &TrainingProgram::partition_text);
  def_partition_fields<TrainingProgram>(training);
  training.def_property_readonly(
      "forward_output_sizes",
      [](const TrainingProgram& t) {
        py::list out;
        for (int o : t.partition.forward.outputs) out.append(py::cast(t.partition.forward.nodes[o].sizes));
        return out;
      },
      "sizes of the forward graph's outputs (the step's results, then the saved values)");
  m.def("compile_training", &compile_training, py::arg("builder"), py::arg("forward_outputs"), py::arg("tangents"),
        py::arg("backward_start"), py::arg("recompute") = true, py::arg("debug_dir") = "",
        py::call_guard<py::gil_scoped_release>(),
        "Partitions the builder's joint forward+backward graph and compiles both programs.");
  m.def("blas_prefer", &runtime::blas::prefer, "a loaded library (torch's MKL) that KILN_BLAS=auto should use");
  m.def("blas_library", [] { return runtime::blas::library().name; }, "the BLAS matrix products run on ('': none)");
  m.def("blas_bf16", [] { return runtime::blas::bf16_gemm() != nullptr; },
        "whether bfloat16 products can run as kiln steps (oneDNN's dnnl_gemm_bf16bf16f32)");
  m.def("fast_hits", [] { return FastPath::hits(); });
  m.def("reset_fast_hits", [] { FastPath::hits() = 0; });

  py::class_<FastPath>(m, "FastPath")
      .def(py::init<py::object, py::object, py::object, py::object>())
      .def("add", &FastPath::add)
      .def("clear", &FastPath::clear)
      .def("__call__", &FastPath::call);

  py::class_<GuardedEntry, std::shared_ptr<GuardedEntry>>(m, "GuardedEntry");

  py::class_<runtime::GraphTemplate>(m, "GraphTemplate", "two captures of one function fitted to one size symbol")
      .def(py::init([](const capture::GraphBuilder& a, const capture::GraphBuilder& b,
                       const std::vector<std::tuple<int, int64_t, int64_t>>& ints) {
             std::vector<runtime::ChangedInt> changed;
             for (auto [leaf, x, y] : ints) changed.push_back({leaf, x, y});
             return runtime::fit_graph_template(a.graph(), b.graph(), changed, a.size_rules(), b.size_rules());
           }),
           py::arg("first"), py::arg("second"), py::arg("changed_ints") = std::vector<std::tuple<int, int64_t, int64_t>>(),
           "changed_ints: (leaf, first value, second value) of the int arguments that changed")
      .def_property_readonly("values",
                             [](const runtime::GraphTemplate& t) {
                               py::list out;
                               for (const auto& [leaf, f] : t.values)
                                 out.append(py::make_tuple(leaf, py::make_tuple(f.base, f.coeff)));
                               return out;
                             },
                             "per changed int argument: (leaf, (base, coeff))")
      .def_readonly("source", &runtime::GraphTemplate::source)
      .def_property_readonly("seen", [](const runtime::GraphTemplate& t) { return py::make_tuple(t.seen[0], t.seen[1]); })
      .def_property_readonly("inputs",
                             [](const runtime::GraphTemplate& t) {
                               py::list out;
                               auto pairs = [](const std::vector<runtime::Affine>& v) {
                                 std::vector<std::pair<int64_t, int64_t>> p;
                                 for (const auto& f : v) p.emplace_back(f.base, f.coeff);
                                 return p;
                               };
                               for (const auto& i : t.inputs)
                                 out.append(py::make_tuple(i.leaf, pairs(i.sizes), pairs(i.strides)));
                               return out;
                             },
                             "per graph input: (leaf, size forms, stride forms) as (base, coeff) pairs")
      .def_property_readonly_static("min_symbol", [](py::object) { return runtime::kMinSymbol; })
      .def_property_readonly_static("max_symbol", [](py::object) { return runtime::max_symbol(); });

  py::class_<DynamicProgram>(m, "DynamicProgram")
      .def_readonly("first", &DynamicProgram::first)
      .def_property_readonly("describe", [](const DynamicProgram& p) { return p.dynamic->describe(); })
      .def(
          "program_for",
          [](const DynamicProgram& p, const capture::GraphBuilder& b) -> py::object {
            runtime::CompiledCpuGraph g;
            std::string why;
            g.program = p.dynamic->for_graph(b.graph(), &why);
            if (!g.program) return py::none();
            g.timings = {"no compile: the dynamic program's lowering matches at this size"};
            g.graph_text = ir::print(b.graph());
            return py::cast(Program(std::move(g)));
          },
          "the program for a capture whose lowering matches the kernel template, or None");
  py::class_<DynamicTraining>(m, "DynamicTraining")
      .def_readonly("first", &DynamicTraining::first)
      .def_property_readonly("describe", [](const DynamicTraining& t) { return t.dynamic->describe(); })
      .def(
          "at",
          [](const DynamicTraining& t, int64_t s) -> py::object {
            std::string why;
            std::optional<TrainingProgram> p;
            {
              py::gil_scoped_release release;  // the passes run again at this size
              p = training_at(*t.dynamic, s, &why);
            }
            if (!p) return py::make_tuple(py::none(), why);
            return py::make_tuple(py::cast(std::move(*p)), "");
          },
          py::arg("s"), "(the training step at size s, '') or (None, why it does not match)");
  m.def("compile_dynamic_training", &compile_dynamic_training, py::arg("template"), py::arg("forward_outputs"),
        py::arg("tangents"), py::arg("backward_start"), py::arg("recompute") = true, py::arg("debug_dir") = "",
        py::call_guard<py::gil_scoped_release>(),
        "partitions and lowers a joint graph template at its two captured sizes and compiles each half's kernel "
        "template once (or raises Unsupported)");
  m.def("compile_dynamic", &compile_dynamic, py::arg("template"), py::arg("debug_dir") = "",
        py::call_guard<py::gil_scoped_release>(),
        "lowers a graph template at its two captured sizes and compiles their kernel template once (or raises Unsupported)");

  py::class_<DynamicEntry, GuardedEntry, std::shared_ptr<DynamicEntry>>(m, "DynamicEntry")
      .def(py::init<std::shared_ptr<py_bind::GuardSet>, DynamicProgram>(), py::arg("guards"), py::arg("program"))
      .def("__call__", &DynamicEntry::call)
      .def("last_failure", [](const DynamicEntry& e) { return e.last_failure(); })
      .def("failed_on_data_dependent_shape", [](const DynamicEntry&) { return false; })
      .def_property_readonly("instances", &DynamicEntry::instances)
      .def_property_readonly("refused", &DynamicEntry::refused)
      .def_property_readonly("guards", &DynamicEntry::guards);

  py::class_<Entry, GuardedEntry, std::shared_ptr<Entry>>(m, "Entry")
      .def(py::init<std::shared_ptr<py_bind::GuardSet>, Program, py::list, bool>(), py::arg("guards"),
           py::arg("program"), py::arg("fallbacks") = py::list(), py::arg("lazy_outputs") = false)
      .def("__call__", &Entry::call)
      .def("run", &Entry::run, py::arg("leaves"), py::arg("consumable") = std::vector<int>(),
           "runs without checking the guards (a training step); drops the `consumable` leaves after their "
           "last use (their list items become None)")
      .def("last_failure", [](const Entry& e) { return e.last_failure(); })
      .def("failed_on_data_dependent_shape", &Entry::failed_on_data_dependent_shape)
      .def_property_readonly("guards", &Entry::guards)
      .def_property_readonly("program", &Entry::program, py::return_value_policy::reference_internal);
}

}  // namespace kiln::py_bind
