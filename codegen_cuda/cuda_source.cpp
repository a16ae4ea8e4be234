/// \file cuda_source.cpp
/// The loop-IR to CUDA C++ emitter: kernel shapes, per-dtype scalar semantics (mirroring
/// codegen_cpu/cpu_codegen.cpp op for op), reductions across a block, and the text layout.
///
/// Note [CUDA kernel shapes]
/// flat  No phase has inner loops (pointwise kernels, and reductions over extent-1 dims). Thread
///       t of the grid takes elements t, t + T, t + 2T ... of the flattened outer domain (T = all
///       threads, 64-bit indices) and recovers each loop variable by div/mod. When every access
///       that depends on the innermost loop is `base + var` (unit stride) and its extent is a
///       multiple of 4, a thread takes 4 consecutive elements per step instead: one 16-byte
///       load or store per access when the addresses are aligned (checked at run time, since a
///       view's storage offset can break it), a scalar loop otherwise.
/// row   A phase loops over an inner domain. Block b takes outer iterations (rows) b, b + G ...;
///       its threads stride over each phase's inner domain, fold their reductions, and
///       kiln_block_reduce combines them (warp shuffles, then shared memory across warps) and
///       hands every thread the result before the next phase reads it. A phase without loops is
///       computed by every thread and stored by thread 0. When a row fits in 8 elements per
///       thread, the inner loop is unrolled over those slots and loads that several phases read
///       (softmax's and layer norm's x) stay in registers: the row is read from memory once.
/// column  A row kernel whose kept innermost dim is the contiguous one (x.sum(0)): a block takes
///       a tile of adjacent outer iterations, one per thread column, so warps read whole
///       sectors (Note [CUDA column kernels]).
/// scan  cumsum/cumprod: a block per row, a chunk of the row per thread (Note [CUDA scans]).
/// A folding scatter's stores are atomic updates in whichever shape (Note [CUDA folding
/// scatters]).
///
/// Block size of row kernels: 256 threads when a row has at most 2048 elements (8 per thread,
/// 8 resident blocks per SM), shrunk to the row's size (at least one warp) for short rows so
/// threads are not idle; 1024 for long rows (>= 4096) and for few rows (< 256 blocks, e.g. the
/// partials of a whole-tensor reduction), where one block per row must keep many loads in flight.
///
/// Scalar semantics follow cpu_codegen.cpp (NaN-propagating max/min, floor division and modulo
/// with a status flag instead of a trap, float -> int through int32, bool as a byte, argmax's
/// first-NaN rule, float64 accumulators when acc_dtype says so), with three differences that
/// eager CUDA shares: NVRTC contracts a*b+c into FMAs, libdevice's exp/tanh/erf differ from the
/// CPU polynomials in the last ulps, and an out-of-range float -> int conversion saturates. int32
/// and int64 arithmetic is plain C (it wraps on the GPU); narrower types are cast back after each
/// operation. float16/bfloat16 values are float32 in registers and round when cast or stored;
/// the lowering computes each half op in float32 and casts its result (Note [Half arithmetic]
/// in passes/lower_pointwise.cpp), so what is rounded is what eager rounds.
///
/// Every value is computed once where its variables are bound: an expression that does not
/// depend on the inner loop's variables is emitted before that loop (per row: a norm's
/// 1/sqrt(var + eps)), one that depends on no variable before the grid-stride loop.
#include "codegen_cuda/cuda_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>

#include "codegen_cuda/cuda_prelude.h"
#include "support/config.h"
#include "support/error.h"

namespace kiln::cuda {
using namespace kiln::ir;

namespace {

/// Elements per thread and step in vectorised flat kernels: 16 bytes of float32, or of a
/// 2-byte type (kVecNarrow) when every vector access is one (a float16/bfloat16 kernel).
constexpr int kVec = 4;
constexpr int kVecNarrow = 8;
/// Rows of at most this many elements per thread are unrolled and kept in registers.
constexpr int64_t kMaxItems = 8;


/// C++ type of a value of dtype `t` in registers (float16/bfloat16 compute in float).
std::string reg_type(DType t) {
  switch (t) {
    case DType::Bool: return "bool";
    case DType::UInt8: return "unsigned char";
    case DType::Int8: return "signed char";
    case DType::Int16: return "short";
    case DType::Int32: return "int";
    case DType::Int64: return "long long";
    case DType::Float16:
    case DType::BFloat16:
    case DType::Float32: return "float";
    case DType::Float64: return "double";
  }
  KILN_UNREACHABLE("dtype");
}

/// C++ type of an element of dtype `t` in memory (bool as a byte, half types as their bits).
std::string mem_type(DType t) {
  if (t == DType::Bool) return "unsigned char";
  if (is_half(t)) return "unsigned short";
  return reg_type(t);
}

bool is_unsigned(DType t) { return t == DType::Bool || t == DType::UInt8; }
/// int32 and int64 arithmetic needs no cast back to its type; narrower types are promoted.
bool is_wide_int(DType t) { return t == DType::Int32 || t == DType::Int64; }

std::string float_literal(double v, DType t) {
  bool f32 = t != DType::Float64;
  if (std::isnan(v)) return f32 ? "__int_as_float(0x7fc00000)" : "__longlong_as_double(0x7ff8000000000000LL)";
  if (std::isinf(v)) {
    if (f32) return v > 0 ? "__int_as_float(0x7f800000)" : "__int_as_float(0xff800000)";
    return v > 0 ? "__longlong_as_double(0x7ff0000000000000LL)" : "__longlong_as_double(0xfff0000000000000LL)";
  }
  // Shortest text that reads back to the same value.
  std::string s = f32 ? fmt::format("{}", static_cast<float>(v)) : fmt::format("{}", v);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return f32 ? s + "f" : s;
}

std::string int_literal(int64_t v, DType t) {
  switch (t) {
    case DType::Bool: return v ? "true" : "false";
    case DType::Int64:
      if (v == INT64_MIN) return "(-9223372036854775807LL - 1)";
      return fmt::format("{}LL", v);
    case DType::Int32:
      if (v == INT32_MIN) return "(-2147483647 - 1)";
      return fmt::format("{}", v);
    default: return fmt::format("(({}){})", reg_type(t), v);
  }
}

/// libm function name for float32 (`expf`) or float64 (`exp`).
std::string math_fn(const char* base, DType t) { return t == DType::Float64 ? base : std::string(base) + "f"; }

/// Text of value `x` (in registers as dtype `from`) converted to `to`, with kiln's cast rules:
/// float -> int goes through int32 (int64 for int64), int -> int wraps or extends by the
/// source's signedness, anything -> bool is `!= 0`, a cast to a half type rounds.
std::string cast_text(const std::string& x, DType from, DType to) {
  if (from == to) return x;
  if (to == DType::Bool) return fmt::format("({} != 0)", x);
  if (is_float(to)) {
    std::string f = reg_type(from) == reg_type(to) ? x : fmt::format("({}){}", reg_type(to), x);
    if (to == DType::Float16) return fmt::format("kiln_round_f16({})", f);
    if (to == DType::BFloat16) return fmt::format("kiln_round_bf16({})", f);
    return f;
  }
  if (is_float(from)) {
    if (to == DType::Int64) return fmt::format("(long long){}", x);
    if (to == DType::Int32) return fmt::format("(int){}", x);
    return fmt::format("({})(int){}", reg_type(to), x);
  }
  return fmt::format("({}){}", reg_type(to), x);
}

/// Memory element -> register value.
std::string from_memory(const std::string& m, DType t) {
  if (t == DType::Bool) return fmt::format("({} != 0)", m);
  if (t == DType::Float16) return fmt::format("kiln_f16_to_f32({})", m);
  if (t == DType::BFloat16) return fmt::format("kiln_bf16_to_f32({})", m);
  return m;
}

/// Register value -> memory element.
std::string to_memory(const std::string& v, DType t) {
  if (t == DType::Bool) return fmt::format("(unsigned char){}", v);
  if (t == DType::Float16) return fmt::format("kiln_f32_to_f16({})", v);
  if (t == DType::BFloat16) return fmt::format("kiln_f32_to_bf16({})", v);
  return v;
}

/// Accumulator type of a reduction: half types accumulate in float32; argmax/argmin carry a
/// position beside the value.
std::string acc_type(const Reduction& r) {
  std::string t = reg_type(r.acc_dtype);
  if (r.op == ReduceOp::ArgMax || r.op == ReduceOp::ArgMin) return fmt::format("kiln_arg<{}>", t);
  if (r.op == ReduceOp::Any || r.op == ReduceOp::All) return "bool";
  return t;
}

/// The fold's starting value (as the CPU backend's reduce_init).
std::string reduce_identity(const Reduction& r) {
  DType t = r.acc_dtype;
  bool fl = is_float(t);
  auto lowest = [&]() -> std::string {
    if (fl) return float_literal(-INFINITY, t);
    switch (t) {
      case DType::Bool: return "false";
      case DType::UInt8: return int_literal(0, t);
      case DType::Int8: return int_literal(INT8_MIN, t);
      case DType::Int16: return int_literal(INT16_MIN, t);
      case DType::Int32: return int_literal(INT32_MIN, t);
      default: return int_literal(INT64_MIN, t);
    }
  };
  auto highest = [&]() -> std::string {
    if (fl) return float_literal(INFINITY, t);
    switch (t) {
      case DType::Bool: return "true";
      case DType::UInt8: return int_literal(UINT8_MAX, t);
      case DType::Int8: return int_literal(INT8_MAX, t);
      case DType::Int16: return int_literal(INT16_MAX, t);
      case DType::Int32: return int_literal(INT32_MAX, t);
      default: return int_literal(INT64_MAX, t);
    }
  };
  switch (r.op) {
    case ReduceOp::Sum: return fl ? float_literal(0.0, t) : int_literal(0, t);
    case ReduceOp::Prod: return fl ? float_literal(1.0, t) : int_literal(1, t);
    case ReduceOp::Any: return "false";
    case ReduceOp::All: return "true";
    case ReduceOp::Max: return lowest();
    case ReduceOp::Min: return highest();
    case ReduceOp::ArgMax: return fmt::format("kiln_arg<{}>{{{}, -1LL}}", reg_type(t), lowest());
    case ReduceOp::ArgMin: return fmt::format("kiln_arg<{}>{{{}, -1LL}}", reg_type(t), highest());
  }
  KILN_UNREACHABLE("reduce op");
}

const char* reduce_functor(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "kiln_sum_op()";
    case ReduceOp::Prod: return "kiln_prod_op()";
    case ReduceOp::Max: return "kiln_max_op()";
    case ReduceOp::Min: return "kiln_min_op()";
    case ReduceOp::ArgMax: return "kiln_argmax_op()";
    case ReduceOp::ArgMin: return "kiln_argmin_op()";
    case ReduceOp::Any: return "kiln_any_op()";
    case ReduceOp::All: return "kiln_all_op()";
  }
  KILN_UNREACHABLE("reduce op");
}

bool contains(Expr e, Expr v);

/// Does `e` (an int64 index) read `v` only as `... + v` (coefficient 1, no div/mod/load)?
/// Returns the coefficient of v, or -1 when v appears in any other way.
int64_t unit_coefficient(Expr e, Expr v) {
  switch (e->op) {
    case ExprOp::Const: return 0;
    case ExprOp::Var: return e == v ? 1 : 0;
    case ExprOp::Add: {
      int64_t a = unit_coefficient(e->a, v), b = unit_coefficient(e->b, v);
      return a < 0 || b < 0 ? -1 : a + b;
    }
    case ExprOp::Mul: {
      if (!is_const(e->b)) return -1;
      int64_t a = unit_coefficient(e->a, v);
      return a < 0 ? -1 : a * e->b->ival;
    }
    default:
      return contains(e, v) ? -1 : 0;  // anything else may use v only by not containing it
  }
}

bool contains(Expr e, Expr v) {
  std::set<Expr> seen;
  bool found = false;
  visit(e, seen, [&](Expr x) { found |= x == v; });
  return found;
}

void collect_loads(Expr e, std::set<Expr>& out) {
  std::set<Expr> seen;
  visit(e, seen, [&](Expr x) {
    if (x->op == ExprOp::Load && x->ival >= 0) out.insert(x);
  });
}

int64_t extent_product(const std::vector<Loop>& loops) {
  int64_t n = 1;
  for (const Loop& l : loops) n *= l.var->ival;
  return n;
}

class KernelEmitter {
 public:
  KernelEmitter(const KernelProgram& p, const Kernel& k, const std::string& symbol, LaunchShape* shape)
      : p_(p), k_(k), ctx_(*p.ctx), symbol_(symbol), shape_(*shape) {}

  std::string emit() {
    collect_buffers();
    bool scan = false;
    for (const Phase& ph : k_.phases) {
      row_ |= !ph.loops.empty();
      for (const Reduction& r : ph.reductions) scan |= r.running && !ph.loops.empty();
    }
    // Note [Scans] (lower_to_loops.cpp) gives a scan a kernel of its own: one phase looping
    // over the scanned dim, folding running sums or products its stores read.
    if (scan)
      for (const Phase& ph : k_.phases)
        for (const Reduction& r : ph.reductions)
          KILN_UNSUPPORTED_IF(k_.phases.size() != 1 || !r.running || (r.op != ReduceOp::Sum && r.op != ReduceOp::Prod),
                              "CUDA codegen: a scan fused with other reductions in {}", k_.name);
    shape_ = LaunchShape{};
    shape_.row = row_;
    shape_.outer_extent = extent_product(k_.loops);
    scopes_.push_back({"", {}, "  "});
    std::string kind;
    if (scan) {
      emit_scan_kernel();
      kind = fmt::format("scan kernel: one block of {} threads per row, a chunk of the row per thread", shape_.block);
    } else if (row_) {
      emit_row_kernel();
      kind = shape_.columns ? fmt::format("column kernel: blocks of {} threads, {} adjacent columns each{}",
                                          shape_.block, shape_.columns,
                                          cached_.empty() ? "" : ", each thread's elements kept in registers")
                            : fmt::format("row kernel: one block of {} threads per row{}", shape_.block,
                                          cached_.empty() ? "" : ", the row kept in registers between phases");
    } else if (vector_candidate()) {
      emit_vector_flat_kernel();
      kind = fmt::format("flat kernel: {} threads per block, {} elements per thread with 16-byte accesses",
                         shape_.block, vec_);
    } else {
      emit_flat_kernel();
      kind = fmt::format("flat kernel: {} threads per block, grid-stride", shape_.block);
    }
    shape_.may_fail = uses_status_;
    shape_.buffers = buffers_;

    std::string s = cuda_prelude();
    s += fmt::format("\n// kiln kernel {} ({})\n", k_.name, kind);
    s += fmt::format("// provenance: {}\n", k_.provenance.empty() ? "-" : k_.provenance);
    s += fmt::format("extern \"C\" __global__ void __launch_bounds__({}) {}(\n", shape_.block, symbol_);
    for (int b : buffers_) {
      const Buffer& buf = p_.buffers[b];
      std::string what = buf.kind == BufferKind::Input    ? fmt::format("input {}", buf.index)
                         : buf.kind == BufferKind::Output ? fmt::format("output {}", buf.index)
                                                          : std::string("intermediate");
      bool read_only = !written_.count(b);
      s += fmt::format("    {}{}* __restrict__ buf{},  // {}: {}[{}]\n", read_only ? "const " : "", mem_type(buf.dtype), b,
                       what, dtype_name(buf.dtype), fmt::join(buf.sizes, ", "));
    }
    s += "    int* __restrict__ status) {\n";
    if (uses_kst_) s += "  int kst = 0;  // set by an integer division by zero\n";
    s += scopes_[0].text;
    if (uses_status_) s += "  if (kst) *status = 1;\n";
    else if (uses_kst_) s += "  (void)kst;  // constant divisors: nothing can fail\n";
    s += "}\n";
    return s;
  }

 private:
  struct Scope {
    std::string text;
    std::unordered_map<Expr, std::string> names;  ///< expressions already computed here
    std::string indent;
  };

  // ---- bookkeeping ----------------------------------------------------------------------

  void collect_buffers() {
    std::set<int> used;
    std::set<Expr> loads;
    for (Expr e : k_.exprs()) collect_loads(e, loads);
    for (Expr l : loads) used.insert(static_cast<int>(l->ival));
    for (const Phase& ph : k_.phases)
      for (const Store& st : ph.stores) {
        used.insert(st.buffer);
        written_.insert(st.buffer);
      }
    for (int b : used) KILN_CHECK(b >= 0 && static_cast<size_t>(b) < p_.buffers.size(), "kernel uses buf{}", b);
    buffers_.assign(used.begin(), used.end());
    for (Expr l : loads)
      if (written_.count(static_cast<int>(l->ival))) self_read_.insert(static_cast<int>(l->ival));
  }

  int level() const { return static_cast<int>(scopes_.size()) - 1; }

  void line(int lvl, const std::string& text) { scopes_[lvl].text += scopes_[lvl].indent + text + "\n"; }
  void line(const std::string& text) { line(level(), text); }

  void open_scope(const std::string& indent) {
    scopes_.push_back({"", {}, indent});
    level_memo_.clear();
  }
  /// Closes the innermost scope and returns its text (the caller wraps it in a loop or block).
  std::string close_scope() {
    std::string t = std::move(scopes_.back().text);
    scopes_.pop_back();
    level_memo_.clear();
    return t;
  }

  void bind_var(Expr v, const std::string& name, int lvl) {
    var_name_[v] = name;
    var_level_[v] = lvl;
    level_memo_.clear();
  }

  static std::string var_name(Expr v) { return fmt::format("i{}", v->var_id); }

  /// Declares the variables of `loops` at the current level from the flat index `flat`
  /// (row-major: the last loop varies fastest).
  /// `rename` gives one variable another name (the vector kernel's chunk start).
  void decode(const std::vector<Loop>& loops, const std::string& flat, const std::string& rem_name,
              Expr rename = nullptr, const std::string& new_name = "") {
    auto name = [&](Expr v) { return v == rename ? new_name : var_name(v); };
    if (loops.empty()) return;
    if (loops.size() == 1) {
      line(fmt::format("const long long {} = {};", name(loops[0].var), flat));
      bind_var(loops[0].var, name(loops[0].var), level());
      return;
    }
    line(fmt::format("long long {} = {};", rem_name, flat));
    for (size_t i = loops.size(); i-- > 0;) {
      Expr v = loops[i].var;
      if (i == 0) {
        line(fmt::format("const long long {} = {};", name(v), rem_name));
      } else {
        line(fmt::format("const long long {} = {} % {}LL;", name(v), rem_name, v->ival));
        line(fmt::format("{} /= {}LL;", rem_name, v->ival));
      }
      bind_var(v, name(v), level());
    }
  }

  // ---- expressions ------------------------------------------------------------------------

  /// The scope level at which `e` can be computed: the deepest of its variables' and
  /// placeholders' levels (0 for constants).
  int level_of(Expr e) {
    switch (e->op) {
      case ExprOp::Const: return 0;
      case ExprOp::Var: {
        auto it = var_level_.find(e);
        KILN_CHECK(it != var_level_.end(), "loop variable i{} used outside its loop", e->var_id);
        return it->second;
      }
      case ExprOp::Load:
        if (e->ival < 0) {
          auto it = placeholders_.find(static_cast<int>(-1 - e->ival));
          KILN_CHECK(it != placeholders_.end(), "reduction acc{} read before its phase", -1 - e->ival);
          return it->second.second;
        }
        // Vector slots and register caches are per element; a buffer this kernel also writes
        // must be read where the read is, after the stores before it.
        if (overrides_.count(e) || cached_.count(e) || self_read_.count(static_cast<int>(e->ival))) return level();
        break;
      default: break;
    }
    auto it = level_memo_.find(e);
    if (it != level_memo_.end()) return it->second;
    int l = 0;
    for (int i = 0; i < expr_op_arity(e->op); ++i) l = std::max(l, level_of(e->operand(i)));
    level_memo_[e] = l;
    return l;
  }

  /// Text of `e` as an operand: a literal, a variable, or a temporary declared at its level.
  std::string emit(Expr e) {
    switch (e->op) {
      case ExprOp::Const: return is_float(e->dtype) ? float_literal(e->fval, e->dtype) : int_literal(e->ival, e->dtype);
      case ExprOp::Var: level_of(e); return var_name_.at(e);
      case ExprOp::Load:
        if (e->ival < 0) {
          level_of(e);
          return placeholders_.at(static_cast<int>(-1 - e->ival)).first;
        }
        break;
      default: break;
    }
    int lvl = level_of(e);
    auto& names = scopes_[lvl].names;
    auto it = names.find(e);
    if (it != names.end()) return it->second;
    // A value kept in registers (Note: choose_cached_values) is read back after the phase that
    // computed it; that phase writes it.
    auto kept = cached_.find(e);
    bool filled = kept != cached_.end() && cache_filled_.count(e);
    std::string text = filled ? kept->second + "[it]" : expr_text(e);
    std::string name = fmt::format("t{}", next_temp_++);
    line(lvl, fmt::format("const {} {} = {};", reg_type(e->dtype), name, text));
    if (kept != cached_.end() && !filled) line(lvl, fmt::format("{}[it] = {};", kept->second, name));
    scopes_[lvl].names[e] = name;
    return name;
  }

  std::string load_text(Expr e) {
    int b = static_cast<int>(e->ival);
    auto ov = overrides_.find(e);
    if (ov != overrides_.end()) return from_memory(ov->second, e->dtype);
    return from_memory(fmt::format("buf{}[{}]", b, emit(e->a)), e->dtype);
  }

  std::string expr_text(Expr e) {
    switch (e->op) {
      case ExprOp::Load: return load_text(e);
      case ExprOp::Cast: return cast_text(emit(e->a), e->a->dtype, e->dtype);
      case ExprOp::Select: return fmt::format("({} ? {} : {})", emit(e->a), emit(e->b), emit(e->c));
      case ExprOp::Fma:
        return fmt::format("{}({}, {}, {})", math_fn("fma", e->dtype), emit(e->a), emit(e->b), emit(e->c));
      default: break;
    }
    return expr_op_arity(e->op) == 1 ? unary_text(e) : binary_text(e);
  }

  std::string unary_text(Expr e) {
    DType t = e->a->dtype;
    std::string x = emit(e->a);
    bool fl = is_float(t);
    auto math = [&](const char* f) {
      KILN_UNSUPPORTED_IF(!fl, "CUDA codegen: {} of {}", f, dtype_name(t));
      return fmt::format("{}({})", math_fn(f, t), x);
    };
    switch (e->op) {
      case ExprOp::Neg:
        if (fl) return "-" + x;
        return is_wide_int(t) ? fmt::format("(-{})", x) : fmt::format("({})(-{})", reg_type(t), x);
      case ExprOp::Abs:
        if (fl) return math("fabs");
        if (is_unsigned(t)) return x;
        return fmt::format("({0} < 0 ? ({1})(-{0}) : {0})", x, reg_type(t));
      case ExprOp::Exp: return math("exp");
      case ExprOp::Exp2: return math("exp2");
      case ExprOp::Expm1: return math("expm1");
      case ExprOp::Log: return math("log");
      case ExprOp::Log2: return math("log2");
      case ExprOp::Log1p: return math("log1p");
      case ExprOp::Sqrt: return math("sqrt");
      case ExprOp::Sin: return math("sin");
      case ExprOp::Cos: return math("cos");
      case ExprOp::Tan: return math("tan");
      case ExprOp::Tanh: return math("tanh");
      case ExprOp::Erf: return math("erf");
      case ExprOp::Floor: return fl ? math("floor") : x;
      case ExprOp::Ceil: return fl ? math("ceil") : x;
      case ExprOp::Round: return fl ? math("rint") : x;  // rint: half to even, as torch.round
      case ExprOp::Trunc: return fl ? math("trunc") : x;
      case ExprOp::Not: return fmt::format("(!{})", x);
      case ExprOp::BitNot: return t == DType::Bool ? fmt::format("(!{})", x) : fmt::format("({})(~{})", reg_type(t), x);
      case ExprOp::IsNan: return fl ? fmt::format("({0} != {0})", x) : "false";
      default: KILN_UNREACHABLE(std::string("unary ") + expr_op_name(e->op));
    }
  }

  /// Integer division or remainder. Index arithmetic (a positive constant divisor) divides
  /// directly when the dividend cannot be negative; everything else checks for zero.
  std::string int_divmod_text(ExprOp op, Expr a, Expr b, DType t) {
    std::string x = emit(a), y = emit(b);
    bool floor = op == ExprOp::Div || op == ExprOp::Mod;
    bool div = op == ExprOp::Div || op == ExprOp::TruncDiv;
    if (is_const(b) && b->ival > 0 && t == DType::Int64) {
      if (!floor || ctx_.bounds(a).first >= 0) return fmt::format("({} {} {})", x, div ? "/" : "%", y);
      return fmt::format("{}({}, {})", div ? "kiln_floordiv_c" : "kiln_floormod_c", x, y);
    }
    uses_kst_ = true;
    // Only a divisor that may be zero can fail (a constant one cannot): only then must the
    // runtime read the status word back, which waits for the stream.
    if (!is_const(b) || b->ival == 0) uses_status_ = true;
    const char* fn = op == ExprOp::Div        ? "kiln_floordiv"
                     : op == ExprOp::Mod      ? "kiln_floormod"
                     : op == ExprOp::TruncDiv ? "kiln_truncdiv"
                                              : "kiln_truncmod";
    return fmt::format("{}<{}>({}, {}, kst)", fn, reg_type(t), x, y);
  }

  std::string binary_text(Expr e) {
    DType t = e->a->dtype;
    bool fl = is_float(t);
    auto arith = [&](const char* o) {
      std::string x = emit(e->a), y = emit(e->b);
      if (fl || is_wide_int(t)) return fmt::format("({} {} {})", x, o, y);
      if (t == DType::Bool) return fmt::format("((({} {} {}) & 1) != 0)", x, o, y);  // 1-bit wrap, as i1
      return fmt::format("({})({} {} {})", reg_type(t), x, o, y);
    };
    auto infix = [&](const char* o) { return fmt::format("({} {} {})", emit(e->a), o, emit(e->b)); };
    switch (e->op) {
      case ExprOp::Add: return arith("+");
      case ExprOp::Sub: return arith("-");
      case ExprOp::Mul: return arith("*");
      case ExprOp::Div:
        if (fl) return infix("/");
        return int_divmod_text(e->op, e->a, e->b, t);
      case ExprOp::TruncDiv:
      case ExprOp::Mod:
        KILN_CHECK(!fl, "{} on floats is lowered before codegen", expr_op_name(e->op));
        return int_divmod_text(e->op, e->a, e->b, t);
      case ExprOp::Fmod:
        if (fl) return fmt::format("{}({}, {})", math_fn("fmod", t), emit(e->a), emit(e->b));
        return int_divmod_text(e->op, e->a, e->b, t);
      case ExprOp::Pow:
        KILN_UNSUPPORTED_IF(!fl, "CUDA codegen: pow of {}", dtype_name(t));
        return fmt::format("{}({}, {})", math_fn("pow", t), emit(e->a), emit(e->b));
      case ExprOp::IndexCheck:
        // An index out of [0, n) flags the call (eager redoes it and raises IndexError) and
        // reads element 0 instead of out of bounds.
        uses_kst_ = true;
        uses_status_ = true;
        return fmt::format("kiln_index_check({}, {}, kst)", emit(e->a), emit(e->b));
      case ExprOp::Max: return fmt::format("kiln_max({}, {})", emit(e->a), emit(e->b));
      case ExprOp::Min: return fmt::format("kiln_min({}, {})", emit(e->a), emit(e->b));
      case ExprOp::Eq: return infix("==");
      case ExprOp::Ne: return infix("!=");
      case ExprOp::Lt: return infix("<");
      case ExprOp::Le: return infix("<=");
      case ExprOp::Gt: return infix(">");
      case ExprOp::Ge: return infix(">=");
      case ExprOp::And:
        if (t == DType::Bool) return infix("&&");
        return is_wide_int(t) ? infix("&") : fmt::format("({})({} & {})", reg_type(t), emit(e->a), emit(e->b));
      case ExprOp::Or:
        if (t == DType::Bool) return infix("||");
        return is_wide_int(t) ? infix("|") : fmt::format("({})({} | {})", reg_type(t), emit(e->a), emit(e->b));
      case ExprOp::Xor:
        if (t == DType::Bool) return infix("!=");
        return is_wide_int(t) ? infix("^") : fmt::format("({})({} ^ {})", reg_type(t), emit(e->a), emit(e->b));
      default: KILN_UNREACHABLE(std::string("binary ") + expr_op_name(e->op));
    }
  }

  // ---- stores and reductions ------------------------------------------------------------------

  /// The load of the element a store writes, when its value reads it: a folding scatter's
  /// `buf[i] = combine(buf[i], v)`; nullptr otherwise.
  Expr folded_load(const Store& st) const {
    if (!self_read_.count(st.buffer)) return nullptr;
    Expr found = nullptr;
    std::set<Expr> seen;
    visit(st.value, seen, [&](Expr x) {
      if (x->op == ExprOp::Load && x->ival == st.buffer && x->a == st.index) found = x;
    });
    return found;
  }

  /// Note [CUDA folding scatters]: threads whose elements land on the same destination (a
  /// scatter_add's repeated index) must not lose each other's updates, so the read-modify-write
  /// of `buf[i] = combine(buf[i], v)` is one atomic step: atomicAdd for a plain sum of float32,
  /// float64, int32 or int64 (eager's own kernels use it), else kiln_atomic_update's
  /// compare-and-swap loop around the combine (products, max/min with NaN, half and narrow
  /// types, each update rounded as eager rounds it). The order of the updates is the
  /// hardware's, as in eager's CUDA kernels: float sums differ from eager's in rounding only.
  void emit_folding_store(const Store& st, Expr old_load) {
    DType t = p_.buffers[st.buffer].dtype;
    std::string target = fmt::format("buf{}[{}]", st.buffer, emit(st.index));
    Expr v = nullptr;  // the sum's other operand
    if (st.value->op == ExprOp::Add) v = st.value->a == old_load ? st.value->b : st.value->b == old_load ? st.value->a : v;
    bool native = t == DType::Float32 || t == DType::Float64 || t == DType::Int32 || t == DType::Int64;
    if (v && native && !contains(v, old_load)) {
      std::string vt = emit(v);
      if (t == DType::Int64)
        line(fmt::format("atomicAdd((unsigned long long*)&{}, (unsigned long long){});", target, vt));
      else
        line(fmt::format("atomicAdd(&{}, {});", target, vt));
      return;
    }
    // The body first: what does not read the old value is declared before the update.
    open_scope(scopes_[level()].indent + "  ");
    overrides_[old_load] = "old";
    std::string nv = to_memory(emit(st.value), t);
    line(fmt::format("return ({}){};", mem_type(t), nv));
    overrides_.erase(old_load);
    std::string body = close_scope();
    line(fmt::format("kiln_atomic_update(&{}, [&]({} old) {{", target, mem_type(t)));
    scopes_[level()].text += body;
    line("});");
  }

  /// `buf[idx] = v;` (or into a vector slot when the store is vectorised); `guard` prefixes it.
  void emit_store(const Store& st, const std::string& guard = "") {
    if (Expr old = guard.empty() ? folded_load(st) : nullptr) {
      emit_folding_store(st, old);
      return;
    }
    DType t = p_.buffers[st.buffer].dtype;
    std::string v = to_memory(emit(st.value), t);
    auto ov = store_overrides_.find(&st);
    std::string target =
        ov != store_overrides_.end() ? ov->second : fmt::format("buf{}[{}]", st.buffer, emit(st.index));
    line(guard + target + " = " + v + ";");
    // Values read from this buffer before the store are stale now.
    if (self_read_.count(st.buffer)) {
      scopes_[level()].names.clear();
      level_memo_.clear();
    }
  }

  std::string acc_name(const Reduction& r) const { return fmt::format("acc{}", r.slot); }

  void declare_acc(const Reduction& r) {
    line(fmt::format("{} {} = {};", acc_type(r), acc_name(r), reduce_identity(r)));
  }

  /// Folds this iteration's element into the thread's accumulator.
  void accumulate(const Reduction& r) {
    std::string acc = acc_name(r);
    if (r.op == ReduceOp::Any || r.op == ReduceOp::All) {
      line(fmt::format("{0} = {0} {1} {2};", acc, r.op == ReduceOp::Any ? "||" : "&&", emit(r.value)));
      return;
    }
    std::string v = cast_text(emit(r.value), r.value->dtype, compute_dtype(r.acc_dtype));
    std::string at = reg_type(r.acc_dtype);
    switch (r.op) {
      case ReduceOp::Sum:
        if (is_float(r.acc_dtype) || is_wide_int(r.acc_dtype)) line(fmt::format("{} += {};", acc, v));
        else line(fmt::format("{0} = ({1})({0} + {2});", acc, at, v));
        break;
      case ReduceOp::Prod:
        if (is_float(r.acc_dtype) || is_wide_int(r.acc_dtype)) line(fmt::format("{} *= {};", acc, v));
        else line(fmt::format("{0} = ({1})({0} * {2});", acc, at, v));
        break;
      case ReduceOp::Max: line(fmt::format("{0} = kiln_max({0}, {1});", acc, v)); break;
      case ReduceOp::Min: line(fmt::format("{0} = kiln_min({0}, {1});", acc, v)); break;
      case ReduceOp::ArgMax:
      case ReduceOp::ArgMin:
        line(fmt::format("{0} = {1}({0}, kiln_arg<{2}>{{{3}, {4}}});", acc,
                         r.op == ReduceOp::ArgMax ? "kiln_argmax" : "kiln_argmin", at, v, emit(r.position)));
        break;
      default: KILN_UNREACHABLE("reduce op");
    }
  }

  /// Declares the reduction's placeholder (what later phases read) at the current level.
  void finish(const Reduction& r) {
    std::string name = fmt::format("r{}", r.slot);
    std::string acc = acc_name(r);
    std::string value;
    if (r.op == ReduceOp::ArgMax || r.op == ReduceOp::ArgMin) {
      value = cast_text(fmt::format("({0}.pos < 0 ? 0LL : {0}.pos)", acc), DType::Int64, r.out_dtype);
    } else if (r.op == ReduceOp::Any || r.op == ReduceOp::All) {
      value = cast_text(acc, DType::Bool, r.out_dtype);
    } else {
      value = cast_text(acc, compute_dtype(r.acc_dtype), r.out_dtype);
    }
    line(fmt::format("const {} {} = {};  // {} {}", reg_type(r.out_dtype), name, value,
                     r.running ? "running" : "the row's", reduce_op_name(r.op)));
    placeholders_[r.slot] = {name, level()};
    level_memo_.clear();
  }

  /// A phase without loops: one element per reduction, every store once (by `guard`).
  void emit_single_phase(const Phase& ph, const std::string& guard) {
    for (const Reduction& r : ph.reductions) {
      declare_acc(r);
      accumulate(r);
      finish(r);
    }
    for (const Store& st : ph.stores) emit_store(st, guard);
  }

  // ---- flat kernels -------------------------------------------------------------------------

  void emit_flat_kernel() {
    shape_.block = 256;
    shape_.items_per_thread = 1;
    line(fmt::format("const long long n = {}LL;", shape_.outer_extent));
    open_scope("    ");
    decode(k_.loops, "e", "rem");
    for (const Phase& ph : k_.phases) emit_single_phase(ph, "");
    std::string body = prune_unused(close_scope(), k_.loops);
    line("for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {");
    scopes_[0].text += body;
    line("}");
  }

  /// Vector accesses of a flat kernel: loads and stores whose index is `... + v` for the
  /// innermost loop variable v.
  struct VectorAccess {
    int buffer;
    Expr index;
    Expr load;          ///< the Load (nullptr for a store)
    std::string array;  ///< register array holding the kVec elements
  };

  /// Whether the flat kernel can take vec_ consecutive elements per thread and step (and sets
  /// vec_: kVecNarrow when every vector access is to 2-byte elements, so each is 16 bytes).
  bool vector_candidate() {
    if (k_.loops.empty() || k_.phases.size() != 1 || !k_.phases[0].reductions.empty()) return false;
    if (!self_read_.empty()) return false;  // the vector loads would run before the stores
    Expr v = k_.loops.back().var;
    if (v->ival % kVec != 0) return false;
    std::set<Expr> loads;
    int vec = 0;
    int widest = 0;  // bytes of the widest element accessed as a vector
    for (const Store& st : k_.phases[0].stores) {
      if (unit_coefficient(st.index, v) != 1) return false;
      collect_loads(st.value, loads);
      ++vec;
      widest = std::max(widest, dtype_bytes(p_.buffers[st.buffer].dtype));
    }
    for (Expr l : loads) {
      std::set<Expr> nested;
      collect_loads(l->a, nested);
      if (!nested.empty()) return false;  // an index read from memory
      int64_t c = unit_coefficient(l->a, v);
      if (c == 1) {
        ++vec;
        widest = std::max(widest, dtype_bytes(p_.buffers[l->ival].dtype));
      } else if (c != 0) {
        return false;
      }
    }
    vec_ = widest <= 2 && v->ival % kVecNarrow == 0 ? kVecNarrow : kVec;
    return vec > 0;
  }

  void emit_vector_flat_kernel() {
    shape_.block = 256;
    shape_.items_per_thread = vec_;
    const Phase& ph = k_.phases[0];
    Expr v = k_.loops.back().var;
    std::string v0 = var_name(v) + "_0";
    line(fmt::format("const long long n = {}LL;", shape_.outer_extent));
    open_scope("    ");  // level 1: one chunk of vec_ elements
    // The innermost variable is bound to the chunk's first element: addresses are computed there.
    decode(k_.loops, "base", "rem", v, v0);
    std::set<Expr> loads;
    for (const Store& st : ph.stores) collect_loads(st.value, loads);
    std::vector<VectorAccess> vloads, vstores;
    for (Expr l : loads)
      if (unit_coefficient(l->a, v) == 1) vloads.push_back({static_cast<int>(l->ival), l->a, l, fmt::format("x{}", vloads.size())});
    for (const Store& st : ph.stores) vstores.push_back({st.buffer, st.index, nullptr, fmt::format("y{}", vstores.size())});
    std::vector<std::string> vload_addr, vstore_addr;
    for (auto& a : vloads) vload_addr.push_back(fmt::format("buf{} + {}", a.buffer, emit(a.index)));
    for (auto& a : vstores) vstore_addr.push_back(fmt::format("buf{} + {}", a.buffer, emit(a.index)));
    std::string aligned = "base + " + std::to_string(vec_) + " <= n";
    for (const auto& a : vload_addr) aligned += fmt::format(" && kiln_aligned<{}>({})", vec_, a);
    for (const auto& a : vstore_addr) aligned += fmt::format(" && kiln_aligned<{}>({})", vec_, a);
    line("const bool vec = " + aligned + ";");
    // From here on v is the element's own variable, bound inside the per-element loops.
    level_memo_.clear();

    // Vector path: whole 16-byte accesses around an unrolled per-element loop.
    std::string vec_text;
    for (size_t i = 0; i < vloads.size(); ++i) {
      DType t = p_.buffers[vloads[i].buffer].dtype;
      vec_text += fmt::format("      alignas(16) {} {}[{}];\n", mem_type(t), vloads[i].array, vec_);
      vec_text += fmt::format("      kiln_vload<{}>({}, {});\n", vec_, vloads[i].array, vload_addr[i]);
    }
    for (const auto& a : vstores)
      vec_text += fmt::format("      alignas(16) {} {}[{}];\n", mem_type(p_.buffers[a.buffer].dtype), a.array, vec_);
    open_scope("        ");
    bind_var(v, var_name(v), level());
    for (const auto& a : vloads) overrides_[a.load] = a.array + "[j]";
    for (size_t i = 0; i < ph.stores.size(); ++i) store_overrides_[&ph.stores[i]] = vstores[i].array + "[j]";
    for (const Store& st : ph.stores) emit_store(st);
    overrides_.clear();
    store_overrides_.clear();
    std::string vec_body = with_element_var(close_scope(), v, v0, "        ");
    vec_text += "#pragma unroll\n";
    vec_text += fmt::format("      for (int j = 0; j < {}; ++j) {{\n{}      }}\n", vec_, vec_body);
    for (size_t i = 0; i < vstores.size(); ++i)
      vec_text += fmt::format("      kiln_vstore<{}>({}, {});\n", vec_, vstore_addr[i], vstores[i].array);

    // Scalar path: the tail, or addresses a view left unaligned.
    open_scope("        ");
    bind_var(v, var_name(v), level());
    for (const Store& st : ph.stores) emit_store(st);
    std::string scalar_body = with_element_var(close_scope(), v, v0, "        ");

    scopes_[1].text += "    if (vec) {\n" + vec_text + "    } else {\n";
    scopes_[1].text += fmt::format("      for (int j = 0; j < {} && base + j < n; ++j) {{\n{}      }}\n", vec_, scalar_body);
    scopes_[1].text += "    }\n";
    std::string chunk = prune_unused(close_scope(), k_.loops);
    line(fmt::format("for (long long base = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * {0}; base < n;"
                     " base += (long long)gridDim.x * blockDim.x * {0}) {{",
                     vec_));
    scopes_[0].text += chunk;
    line("}");
  }

  /// How often the identifier `name` occurs in `text` as a whole word.
  static int uses(const std::string& text, const std::string& name) {
    int n = 0;
    auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    for (size_t at = text.find(name); at != std::string::npos; at = text.find(name, at + 1)) {
      char after = at + name.size() < text.size() ? text[at + name.size()] : ' ';
      char before = at > 0 ? text[at - 1] : ' ';
      n += !word(after) && !word(before);
    }
    return n;
  }

  /// Drops the declarations of `loops`' variables that `body` never reads (a reduction over a
  /// row often needs only the flat index), so the source compiles without warnings.
  static std::string prune_unused(const std::string& body, const std::vector<Loop>& loops) {
    std::string out = body;
    for (const Loop& l : loops) {
      std::string name = var_name(l.var);
      if (uses(out, name) != 1) continue;
      size_t at = out.find("const long long " + name + " = ");
      if (at == std::string::npos) continue;
      size_t start = out.rfind('\n', at);
      start = start == std::string::npos ? 0 : start + 1;
      size_t end = out.find('\n', at);
      out.erase(start, end == std::string::npos ? std::string::npos : end - start + 1);
    }
    return out;
  }

  /// Declares the element's own variable (chunk start + j) in front of `body`, if it reads it.
  static std::string with_element_var(const std::string& body, Expr v, const std::string& v0,
                                      const std::string& indent) {
    if (uses(body, var_name(v)) == 0) return body;
    return fmt::format("{}const long long {} = {} + j;\n", indent, var_name(v), v0) + body;
  }

  // ---- row kernels ----------------------------------------------------------------------------

  void choose_row_block(int64_t inner) {
    int64_t outer = shape_.outer_extent;
    int64_t forced = knob_int("cuda_row_block");
    KILN_UNSUPPORTED_IF(forced != 0 && (forced < 32 || forced > 1024 || (forced & (forced - 1)) != 0),
                        "KILN_CUDA_ROW_BLOCK={} is not a power of two in 32..1024", forced);
    if (inner >= 4096 || (outer < 256 && inner >= 1024)) {
      shape_.block = 1024;
    } else if (forced != 0) {
      shape_.block = static_cast<int>(forced);
    } else {
      int b = 32;
      while (b < inner && b < 256) b *= 2;
      shape_.block = b;
    }
  }

  /// Values that several looping phases compute for the same element (softmax's x, and its
  /// exp(x - max) that the sum and the store both use; layer norm's x - mean), when every such
  /// phase runs the same loops: kept per thread in a register array, filled by the first phase
  /// that computes them. The row is then read from memory once, and no exp is evaluated twice.
  /// Kept: loads, and floating-point values (integer index arithmetic is cheaper to redo than
  /// the registers it would hold). Not: values reading a buffer this kernel writes.
  void choose_cached_values(int64_t items) {
    const std::vector<Loop>* loops = nullptr;
    for (const Phase& ph : k_.phases) {
      if (ph.loops.empty()) continue;
      if (loops && (ph.loops.size() != loops->size() ||
                    !std::equal(ph.loops.begin(), ph.loops.end(), loops->begin(),
                                [](const Loop& a, const Loop& b) { return a.var == b.var; })))
        return;
      loops = &ph.loops;
    }
    if (!loops || items == 0 || items > kMaxItems) return;
    std::map<Expr, bool> per_element;  // depends on the phases' loop variables
    std::function<bool(Expr)> element = [&](Expr e) -> bool {
      auto it = per_element.find(e);
      if (it != per_element.end()) return it->second;
      bool dep = false;
      if (e->op == ExprOp::Var)
        for (const Loop& lp : *loops) dep |= lp.var == e;
      for (int i = 0; i < expr_op_arity(e->op); ++i) dep |= element(e->operand(i));
      return per_element[e] = dep;
    };
    auto keepable = [&](Expr e) {
      bool kind = e->op == ExprOp::Load ? e->ival >= 0
                                        : e->op != ExprOp::Var && e->op != ExprOp::Const && is_float(e->dtype);
      return kind && !contains_stale_load(e);
    };
    std::set<Expr> earlier;  // per-element values an earlier phase computes
    for (const Phase& ph : k_.phases) {
      if (ph.loops.empty()) continue;
      std::vector<Expr> roots;
      for (const Reduction& r : ph.reductions) roots.push_back(r.value);
      for (const Store& st : ph.stores) roots.push_back(st.value);
      std::set<Expr> seen;
      std::function<void(Expr)> find = [&](Expr e) {
        if (!seen.insert(e).second) return;
        if (keepable(e) && element(e) && earlier.count(e)) {
          if (!cached_.count(e)) cached_[e] = fmt::format("c{}", cached_.size());
          return;  // what it is made of is not recomputed here
        }
        for (int i = 0; i < expr_op_arity(e->op); ++i) find(e->operand(i));
      };
      for (Expr r : roots) find(r);
      std::set<Expr> all;
      for (Expr r : roots)
        visit(r, all, [&](Expr x) {
          if (element(x)) earlier.insert(x);
        });
    }
  }

  /// Whether `e` reads a buffer this kernel also writes.
  bool contains_stale_load(Expr e) const {
    std::set<Expr> loads;
    collect_loads(e, loads);
    return std::any_of(loads.begin(), loads.end(),
                       [&](Expr l) { return self_read_.count(static_cast<int>(l->ival)) > 0; });
  }

  /// Note [CUDA column kernels]: a row kernel gives each outer iteration a block whose threads
  /// stride over the reduced elements. When the kept innermost dim c is the contiguous one
  /// (x.sum(0) of a row-major matrix, a mean over H and W of a channels-last activation), a
  /// warp's 32 loads then hit 32 different 32-byte sectors, 4 bytes used of each. A column
  /// kernel instead gives a block a tile of W adjacent outer iterations (W elements fill one
  /// sector: 8 float32s, 16 halves): thread t takes column t % W and reduced elements
  /// t / W, t / W + lanes, ..., so each warp reads 32 / W whole sectors per step. Columns past
  /// the end run a valid column's work without storing (every thread reaches each barrier).
  /// Returns W, or 0 to keep the row form: when some reduced operand is contiguous along the
  /// reduced dim (a row reads it best), when nothing gains, or when a phase's stores are not
  /// contiguous along c.
  int column_width() const {
    if (k_.loops.empty() || !self_read_.empty() || !knob_bool("cuda_column_kernels")) return 0;
    Expr c = k_.loops.back().var;
    int widest = 1;
    bool gains = false;
    for (const Phase& ph : k_.phases) {
      if (ph.loops.empty()) continue;
      Expr inner = ph.loops.back().var;
      std::set<Expr> loads;
      for (const Reduction& r : ph.reductions) collect_loads(r.value, loads);
      for (const Store& st : ph.stores) {
        collect_loads(st.value, loads);
        if (unit_coefficient(st.index, c) != 1) return 0;
      }
      for (Expr l : loads) {
        int64_t sc = unit_coefficient(l->a, c), si = unit_coefficient(l->a, inner);
        if (sc == 1 && si == 1) return 0;
        if (sc != 1) continue;
        gains |= si > 1;
        widest = std::max(widest, dtype_bytes(p_.buffers[l->ival].dtype));
      }
    }
    int w = 32 / widest;
    return gains && c->ival >= w ? w : 0;
  }

  void emit_row_kernel() {
    int64_t inner = 0;
    for (const Phase& ph : k_.phases)
      if (!ph.loops.empty()) inner = std::max(inner, extent_product(ph.loops));
    const int width = column_width();  // 0: one block per row; W: a tile of W columns per block
    if (width) {
      int64_t tiles = (shape_.outer_extent + width - 1) / width;
      shape_.block = tiles < 256 ? 1024 : 256;  // few tiles: each block must keep many loads in flight
      shape_.columns = width;
    } else {
      choose_row_block(inner);
    }
    const int block = shape_.block;
    const int lanes = width ? block / width : block;  // threads per row (per column)
    const std::string first_elem = width ? "lane" : "threadIdx.x";
    int64_t items = (inner + lanes - 1) / lanes;
    bool unrolled = items <= kMaxItems;
    if (unrolled) choose_cached_values(items);
    // Shared memory for the cross-warp step of each reduction that loops.
    for (const Phase& ph : k_.phases)
      if (!ph.loops.empty())
        for (const Reduction& r : ph.reductions)
          line(fmt::format("__shared__ {} smem{}[{}];", acc_type(r), r.slot, width ? block / 32 * width : 33));
    if (width) line(fmt::format("const int lane = threadIdx.x / {};  // this thread's share of its column", width));
    open_scope("    ");  // level 1: one row (one column of the tile)
    if (width) {
      line(fmt::format("const long long col = tile + threadIdx.x % {};", width));
      line(fmt::format("const bool active = col < {}LL;  // past the end: a valid column's work, not stored",
                       shape_.outer_extent));
      line(fmt::format("const long long row = active ? col : {}LL;", shape_.outer_extent - 1));
    }
    decode(k_.loops, "row", "rem");
    for (const auto& [value, array] : cached_)
      line(fmt::format("{} {}[{}];  // {}", reg_type(value->dtype), array, items,
                       value->op == ExprOp::Load ? "this thread's elements of the row, read once"
                                                 : fmt::format("this thread's {} values, computed once",
                                                               expr_op_name(value->op))));
    const std::string store_guard = width ? "if (active) " : "";
    bool first = true;
    for (const Phase& ph : k_.phases) {
      // A phase may read what an earlier one stored (another thread's element, or thread 0's).
      if (!first && !self_read_.empty()) line("__syncthreads();  // earlier phases' stores are read below");
      first = false;
      if (ph.loops.empty()) {
        emit_single_phase(ph, width ? "if (active && lane == 0) " : "if (threadIdx.x == 0) ");
        continue;
      }
      int64_t n = extent_product(ph.loops);
      for (const Reduction& r : ph.reductions) declare_acc(r);
      open_scope(unrolled ? "        " : "      ");  // level 2: one element of the row
      decode(ph.loops, "r", "rrem");
      for (const Reduction& r : ph.reductions) accumulate(r);
      for (const Store& st : ph.stores) emit_store(st, store_guard);
      std::string body = prune_unused(close_scope(), ph.loops);
      if (unrolled) {
        line("#pragma unroll");
        line(fmt::format("for (int it = 0; it < {}; ++it) {{", items));
        line(fmt::format("  const long long r = {} + (long long)it * {};", first_elem, lanes));
        line(fmt::format("  if (r < {}LL) {{", n));
        scopes_[1].text += body;
        line("  }");
        line("}");
      } else {
        line(fmt::format("for (long long r = {}; r < {}LL; r += {}) {{", first_elem, n, lanes));
        scopes_[1].text += body;
        line("}");
      }
      // Loads this phase read are in the registers from now on.
      for (const Reduction& r : ph.reductions) mark_cached(r.value);
      for (const Store& st : ph.stores) mark_cached(st.value);
      for (const Reduction& r : ph.reductions) {
        if (width)
          line(fmt::format("{0} = kiln_column_reduce<{1}>({0}, {2}, smem{3});", acc_name(r), width,
                           reduce_functor(r.op), r.slot));
        else
          line(fmt::format("{0} = kiln_block_reduce({0}, {1}, {2}, smem{3});", acc_name(r), reduce_functor(r.op),
                           reduce_identity(r), r.slot));
        finish(r);
      }
    }
    std::string row = prune_unused(close_scope(), k_.loops);
    if (width)
      line(fmt::format("for (long long tile = (long long)blockIdx.x * {0}; tile < {1}LL; tile += (long long)gridDim.x * {0}) {{",
                       width, shape_.outer_extent));
    else
      line(fmt::format("for (long long row = blockIdx.x; row < {}LL; row += gridDim.x) {{", shape_.outer_extent));
    scopes_[0].text += row;
    line("}");
  }

  /// Note [CUDA scans]: one block per row (outer iteration) as in a row kernel, but thread t
  /// takes a chunk of adjacent elements, [t * c, (t + 1) * c) with c = ceil(n / block), since a
  /// scan combines elements in order. It folds its chunk, kiln_block_exclusive_scan gives it the
  /// fold of every chunk before its own, and it walks its chunk again from there, storing each
  /// running value (the element's value is computed twice rather than kept: chunks can be
  /// long). The accumulator is the lowering's (float64 for float32, as eager's CPU kernel;
  /// eager's CUDA kernel folds float32 in float32, in its own tree order): the results differ
  /// from eager's CUDA ones in rounding, and where eager's float32 products overflow on the
  /// way (1e30 * 1e30 * 0: eager CUDA gives nan or 0 by its order, kiln 0, as eager's CPU).
  void emit_scan_kernel() {
    const Phase& ph = k_.phases[0];
    int64_t n = extent_product(ph.loops);
    choose_row_block(n);
    const int block = shape_.block;
    int64_t chunk = (n + block - 1) / block;
    for (const Reduction& r : ph.reductions) line(fmt::format("__shared__ {} smem{}[33];", acc_type(r), r.slot));
    open_scope("    ");  // level 1: one row
    decode(k_.loops, "row", "rem");
    line(fmt::format("const long long lo = (long long)threadIdx.x * {0}LL, hi = lo + {0}LL < {1}LL ? lo + {0}LL : {1}LL;",
                     chunk, n));
    // A loop over this thread's chunk whose body (level 2: one element) `fill` emits.
    auto chunk_loop = [&](const std::function<void()>& fill) {
      open_scope("      ");
      decode(ph.loops, "r", "rrem");
      fill();
      std::string body = prune_unused(close_scope(), ph.loops);
      line("for (long long r = lo; r < hi; ++r) {");
      scopes_[1].text += body;
      line("}");
    };
    for (const Reduction& r : ph.reductions) declare_acc(r);
    // Pass 1: this thread's chunk, folded.
    chunk_loop([&] {
      for (const Reduction& r : ph.reductions) accumulate(r);
    });
    for (const Reduction& r : ph.reductions)
      line(fmt::format("{0} = kiln_block_exclusive_scan({0}, {1}, {2}, smem{3});  // the chunks before this one",
                       acc_name(r), reduce_functor(r.op), reduce_identity(r), r.slot));
    // Pass 2: the chunk again from that prefix, each running value stored.
    chunk_loop([&] {
      for (const Reduction& r : ph.reductions) {
        accumulate(r);
        finish(r);
      }
      for (const Store& st : ph.stores) emit_store(st);
    });
    std::string row = prune_unused(close_scope(), k_.loops);
    line(fmt::format("for (long long row = blockIdx.x; row < {}LL; row += gridDim.x) {{", shape_.outer_extent));
    scopes_[0].text += row;
    line("}");
  }

  /// After a phase: the kept values it computed are in their register arrays.
  void mark_cached(Expr e) {
    std::set<Expr> seen;
    visit(e, seen, [&](Expr x) {
      if (cached_.count(x)) cache_filled_.insert(x);
    });
  }

  const KernelProgram& p_;
  const Kernel& k_;
  Context& ctx_;
  std::string symbol_;
  LaunchShape& shape_;
  bool row_ = false;
  int vec_ = kVec;  ///< elements per thread and step of a vectorised flat kernel
  bool uses_status_ = false;  ///< a division by a value that may be zero: the kernel may fail
  bool uses_kst_ = false;     ///< a checked integer division (kst is declared)
  std::vector<int> buffers_;
  std::set<int> written_;
  std::set<int> self_read_;  ///< buffers this kernel both stores and loads
  std::vector<Scope> scopes_;
  std::unordered_map<Expr, std::string> var_name_;
  std::unordered_map<Expr, int> var_level_;
  std::unordered_map<Expr, int> level_memo_;
  std::map<int, std::pair<std::string, int>> placeholders_;  ///< slot -> (name, level)
  std::unordered_map<Expr, std::string> overrides_;           ///< loads read from a vector array
  std::unordered_map<const Store*, std::string> store_overrides_;
  std::map<Expr, std::string> cached_;                        ///< values kept in a register array
  std::set<Expr> cache_filled_;
  int next_temp_ = 0;
};

}  // namespace

std::string emit_cuda_kernel(const KernelProgram& p, size_t kernel_index, const std::string& symbol,
                             LaunchShape* shape) {
  KILN_CHECK(kernel_index < p.kernels.size(), "kernel {} of {}", kernel_index, p.kernels.size());
  KILN_CHECK(shape != nullptr, "emit_cuda_kernel needs a LaunchShape");
  // Kernel templates (runtime parameters) are a CPU dynamic program's only.
  KILN_CHECK(p.param_count == 0, "a kernel template has no CUDA code generator");
  return KernelEmitter(p, p.kernels[kernel_index], symbol, shape).emit();
}

}  // namespace kiln::cuda
