/// \file kernel.h
/// The contract between scheduling and the code generators: buffers, kernels (loop nests with
/// stores of scalar expressions) and the program that runs them in order. Codegen decides
/// nothing: every loop's extent and kind, every address and every value is spelled out here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ir/expr.h"
#include "ir/graph.h"

namespace kiln::ir {

enum class BufferKind : uint8_t {
  Input,   ///< a tensor argument (leaf `index` of the call)
  Output,  ///< a tensor the call returns (output `index`)
  Temp,    ///< an intermediate materialised between kernels, from the runtime's pool
  Shared,  ///< an intermediate an extern step reads: a torch tensor allocated by the caller
  Extern,  ///< a result of an extern step: its memory is the tensor that step returned
};

struct Buffer {
  BufferKind kind;
  int index;       ///< leaf index (Input) or output index (Output); -1 for Temp
  DType dtype;
  Sizes sizes;
  Sizes strides;   ///< element strides (Input: as captured; Output: the layout to allocate)
  int64_t storage_numel() const;  ///< elements the strided tensor spans
};

enum class LoopKind : uint8_t { Serial, Parallel, Vectorized };

struct Loop {
  Expr var;        ///< loop variable; its extent is var->ival
  LoopKind kind;
  /// A kernel template's loop whose count the runtime passes (ir/kernel_template.h): the
  /// parameter slot that holds it, which var->ival is one value of; -1: var->ival.
  int extent_param = -1;
};

struct Store {
  int buffer;
  Expr index;
  Expr value;
};

/// How a kernel folds a reduction.
enum class ReduceOp : uint8_t { Sum, Prod, Max, Min, ArgMax, ArgMin, Any, All };
const char* reduce_op_name(ReduceOp r);

/// A reduction folded over its phase's loops. Later phases (and this kernel's stores) read the
/// result through a placeholder: Load(buffer = -1 - slot, index 0).
struct Reduction {
  ReduceOp op;
  Expr value;       ///< the element folded, over the outer and the phase's loop variables
  DType acc_dtype;  ///< accumulator dtype (float64 for long float32 sums)
  DType out_dtype;  ///< the placeholder's dtype
  int slot;
  Expr position = nullptr;  ///< argmax/argmin: the element's position in its row (row-major)
  /// A scan (cumsum, cumprod): the stores of its own phase read the placeholder as the value
  /// folded so far, this iteration's element included. Its phase loop is serial.
  bool running = false;
};

/// One step inside an outer iteration: loops over an inner (reduction) domain, folding
/// reductions and/or storing values; with no loops it runs once per outer iteration.
struct Phase {
  std::vector<Loop> loops;
  std::vector<Reduction> reductions;
  std::vector<Store> stores;
};

struct Kernel {
  std::string name;        ///< readable: named after the ops it fuses
  std::string provenance;  ///< one line: graph nodes it computes
  std::vector<Loop> loops;    ///< outer loops, outermost first; loops[0] is split across threads
  std::vector<Phase> phases;  ///< run in order inside the innermost outer loop
  int64_t outer_extent() const { return loops.empty() ? 1 : loops[0].var->ival; }
  /// Elements touched per unit of the outer loop (for the thread split's grain).
  int64_t inner_work() const;
  /// Every expression the kernel evaluates (stores' indices and values, reductions' values).
  std::vector<Expr> exprs() const;
};

/// An extern operand that is a strided view of an input buffer (a transposed weight, a slice
/// of a cache): the caller passes that view of the argument itself instead of a copy.
struct ExternView {
  bool is_view = false;
  Sizes sizes, strides;  ///< element sizes and strides of the view
  int64_t offset = 0;    ///< elements from the input tensor's first element
};

/// An op run outside kiln's kernels (eagerly, by the caller's callback).
struct ExternCall {
  int table_index;           ///< which op (the compiled function's fallback table)
  std::vector<int> inputs;   ///< buffers passed as its tensor operands
  std::vector<ExternView> views;  ///< per operand: a view of its (input) buffer, or not
  std::vector<int> outputs;  ///< buffers its results become (Extern or Output buffers)
  std::string name;          ///< for logs: the ATen op
};

/// One operand of a matrix product: a strided view of a buffer (any strides: the runtime
/// passes a unit-stride row or column layout to BLAS as is, as a transpose flag and a leading
/// dimension, and packs anything else first).
struct GemmOperand {
  int buffer = -1;
  Sizes sizes, strides;  ///< element sizes and strides of the view: [batch..., rows, cols]
  int64_t offset = 0;    ///< elements from the buffer's first element
};

/// A matrix product run by BLAS: out[batch..., M, N] = a[batch..., M, K] . b[batch..., K, N],
/// into a contiguous buffer. An operand may split the batch into dims of its own (a view that
/// does not merge them): its matrices are taken in row-major order over its batch dims, which
/// is the output's batch order.
struct GemmCall {
  GemmOperand a, b;
  int out = -1;
  bool zero_start = false;  ///< K = 1: +0 where the single product is -0 (eager's bmm)
  std::string name;  ///< for logs and profiles: the graph node it computes
  /// The kernel of the next step when it may run tile by tile right after each tile of the
  /// product, while the tile is in cache (Note [Epilogues in cache]); -1: none. Iteration i of
  /// its outer loop reads only elements [i * epilogue_span, (i + 1) * epilogue_span) of `out`.
  int epilogue = -1;
  int64_t epilogue_span = 0;
  /// CUDA: a vector of N elements (buffer `bias` from element `bias_offset`, contiguous, of
  /// the output's dtype) the product adds to every row of its result before the one rounding
  /// to the output's dtype (Note [Bias in the product]); -1: none.
  int bias = -1;
  int64_t bias_offset = 0;
};

/// One step of a program: a kernel, an extern call or a matrix product, in dependency (and
/// trace) order.
struct Step {
  enum class Kind : uint8_t { Kernel, Extern, Gemm } kind;
  int index;  ///< into kernels, externs or gemms
};

/// Where each returned tensor comes from.
struct OutputSpec {
  /// Buffer: a buffer of the program. Input: the function returned that argument. InputView: a
  /// view of that argument (`view`: sizes, strides, offset), returned as eager returns it, an
  /// alias of the argument's memory.
  enum class Kind : uint8_t { Buffer, Input, InputView } kind;
  int index;  ///< buffer id (Buffer) or leaf index (Input, InputView)
  ExternView view = {};
};

struct KernelProgram {
  std::shared_ptr<Context> ctx;  ///< owns every Expr referenced below
  std::vector<Buffer> buffers;
  std::vector<Kernel> kernels;
  std::vector<ExternCall> externs;
  std::vector<GemmCall> gemms;
  std::vector<Step> steps;        ///< kernels, extern calls and matrix products, run in this order
  std::vector<OutputSpec> outputs;
  std::vector<std::string> fusion_log;  ///< every fusion decision with its reason
  /// Runtime values its kernels read (Param expressions, Loop::extent_param): a kernel
  /// template's (ir/kernel_template.h); 0 for a program lowered at one size.
  int param_count = 0;
};

/// Per buffer: whether a step other than a kernel reads it (a product's operand or bias, an
/// extern's input) or the program returns it.
std::vector<bool> read_outside_kernels(const KernelProgram& p);

/// The steps between which a buffer is in use: `first` is the first step that reads or writes
/// it, `last` the last one (-1, -1: no step touches it). A kernel a matrix product runs on each
/// tile (GemmCall::epilogue, always the next step) touches its buffers during the product's
/// step, which is where `at_product` (the runtime's arena planner) counts it; the bindings'
/// allocation hook counts it at its own step, whose hook runs before the product.
struct BufferLifetime {
  int first = -1, last = -1;
};
std::vector<BufferLifetime> buffer_lifetimes(const KernelProgram& p, bool epilogues_at_product);

std::string print(const Kernel& k);
std::string print(const KernelProgram& p);

}  // namespace kiln::ir
