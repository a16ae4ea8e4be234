/// \file cpu_codegen.cpp
/// The loop-IR to LLVM-IR emitter: loop nests, addressing, per-dtype scalar semantics (torch's
/// NaN rules for max/min, floor division, integer division by zero), and alias facts that let
/// LLVM's loop vectoriser widen the inner loop without runtime checks.
#include "codegen_cpu/cpu_codegen.h"

#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/MDBuilder.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Support/raw_ostream.h>

#include <chrono>
#include <functional>
#include <map>
#include <unordered_map>

#include "codegen_cpu/llvm_math.h"
#include "support/error.h"

namespace kiln::cpu {
using namespace kiln::ir;

namespace {

class KernelEmitter {
 public:
  KernelEmitter(llvm::Module& m, const KernelProgram& p, const Kernel& k, const std::string& symbol)
      : c_(m.getContext()), m_(m), b_(c_), p_(p), k_(k), symbol_(symbol) {}

  void emit() {
    auto* ptr = llvm::PointerType::get(c_, 0);
    auto* i64 = llvm::Type::getInt64Ty(c_);
    auto* fty = llvm::FunctionType::get(llvm::Type::getVoidTy(c_), {ptr, i64, i64}, false);
    f_ = llvm::Function::Create(fty, llvm::Function::ExternalLinkage, symbol_, m_);
    f_->addFnAttr(llvm::Attribute::NoUnwind);
    f_->addFnAttr("target-cpu", host_target().cpu);
    f_->addFnAttr("target-features", host_target().features);
    // Prefer full-width vectors (the default on AVX-512 parts caps them at 256 bits).
    f_->addFnAttr("prefer-vector-width", std::to_string(host_target().vector_bits));
    auto args = f_->arg_begin();
    llvm::Value* bufs = &*args++;
    llvm::Value* begin = &*args++;
    llvm::Value* end = &*args++;
    auto* entry = llvm::BasicBlock::Create(c_, "entry", f_);
    b_.SetInsertPoint(entry);
    make_alias_scopes();
    for (size_t i = 0; i <= p_.buffers.size(); ++i) {
      auto* slot = b_.CreateConstGEP1_64(ptr, bufs, i);
      buf_ptr_[static_cast<int>(i)] = b_.CreateLoad(ptr, slot, fmt_name("buf", i));
    }
    // A kernel template's parameters (ir/kernel_template.h), read once: they are the same for
    // the whole call.
    if (p_.param_count > 0) {
      auto* slot = b_.CreateConstGEP1_64(ptr, bufs, p_.buffers.size() + 1);
      llvm::Value* params = b_.CreateLoad(ptr, slot, "params");
      for (int i = 0; i < p_.param_count; ++i) {
        auto* at = b_.CreateConstGEP1_64(b_.getInt64Ty(), params, static_cast<uint64_t>(i));
        auto* v = b_.CreateLoad(b_.getInt64Ty(), at, fmt_name("p", static_cast<size_t>(i)));
        v->setMetadata(llvm::LLVMContext::MD_invariant_load, llvm::MDNode::get(c_, {}));
        params_.push_back(v);
      }
    }
    status_ = b_.CreateAlloca(b_.getInt32Ty(), nullptr, "status");
    b_.CreateStore(b_.getInt32(0), status_);
    emit_loops(0, begin, end);
    // Publish an integer-division-by-zero seen anywhere in this range.
    llvm::Value* st = b_.CreateLoad(b_.getInt32Ty(), status_);
    auto* set = llvm::BasicBlock::Create(c_, "status.set", f_);
    auto* done = llvm::BasicBlock::Create(c_, "done", f_);
    b_.CreateCondBr(b_.CreateICmpNE(st, b_.getInt32(0)), set, done);
    b_.SetInsertPoint(set);
    auto* store = b_.CreateStore(b_.getInt32(1), buf_ptr_[static_cast<int>(p_.buffers.size())]);
    store->setAtomic(llvm::AtomicOrdering::Monotonic);
    store->setAlignment(llvm::Align(4));
    b_.CreateBr(done);
    b_.SetInsertPoint(done);
    b_.CreateRetVoid();
  }

 private:
  static std::string fmt_name(const char* p, size_t i) { return std::string(p) + std::to_string(i); }

  /// Every buffer is its own alias scope: outputs and temporaries are fresh allocations and
  /// inputs are only read, so no store can alias any other access.
  void make_alias_scopes() {
    llvm::MDBuilder mdb(c_);
    auto* domain = mdb.createAnonymousAliasScopeDomain("kiln");
    std::vector<llvm::Metadata*> scopes;
    for (size_t i = 0; i < p_.buffers.size(); ++i)
      scopes.push_back(mdb.createAnonymousAliasScope(domain, fmt_name("buf", i)));
    for (size_t i = 0; i < p_.buffers.size(); ++i) {
      std::vector<llvm::Metadata*> others;
      for (size_t j = 0; j < scopes.size(); ++j)
        if (j != i) others.push_back(scopes[j]);
      scope_md_.push_back(llvm::MDNode::get(c_, {scopes[i]}));
      noalias_md_.push_back(llvm::MDNode::get(c_, others));
    }
  }

  void annotate(llvm::Instruction* inst, int buffer) {
    inst->setMetadata(llvm::LLVMContext::MD_alias_scope, scope_md_[buffer]);
    inst->setMetadata(llvm::LLVMContext::MD_noalias, noalias_md_[buffer]);
  }

  llvm::Type* reg_type(DType t) {
    switch (t) {
      case DType::Bool: return b_.getInt1Ty();
      case DType::UInt8: case DType::Int8: return b_.getInt8Ty();
      case DType::Int16: return b_.getInt16Ty();
      case DType::Int32: return b_.getInt32Ty();
      case DType::Int64: return b_.getInt64Ty();
      case DType::Float16: case DType::BFloat16:  // Note [Half values in registers]
      case DType::Float32: return b_.getFloatTy();
      case DType::Float64: return b_.getDoubleTy();
      default: throw Unsupported(std::string("CPU codegen has no ") + dtype_name(t));
    }
  }
  llvm::Type* mem_type(DType t) {
    if (t == DType::Bool) return b_.getInt8Ty();
    return is_half(t) ? b_.getInt16Ty() : reg_type(t);
  }

  // Note [Half values in registers]: a float16/bfloat16 value lives in memory as its 16 bits
  // and in registers as the float32 it converts to exactly, as in the CUDA code generator (one
  // meaning of the loop IR for both). Rounding happens where the loop IR says so: at a cast to
  // the half type (Note [Half arithmetic]: once per graph node, as eager rounds) and at a store.
  // A half accumulator is thus a float32 one, rounded once when stored, as eager's CPU kernels
  // accumulate half sums in float.
  //
  // The conversions are integer and float32 operations only, never LLVM's `half` type (so not
  // F16C's vcvtph2ps/vcvtps2ph): around fpext/fptrunc, InstCombine moves float32 arithmetic
  // into half (fcmp of two fpexts, a max reduction's phi, fneg hoisted above an fptrunc), which
  // x86 without AVX512-FP16 then scalarises: a float16 amax ran 25x, a negation 15x slower than
  // the float32 forms. These sequences vectorise on any x86 and round exactly as c10 does.

  /// The half value of bits `h` (i16) as float32: exact.
  llvm::Value* widen_half(llvm::Value* h, DType t) {
    llvm::Value* h32 = b_.CreateZExt(h, b_.getInt32Ty());
    if (t == DType::BFloat16) return b_.CreateBitCast(b_.CreateShl(h32, 16), b_.getFloatTy());
    llvm::Value* sign = b_.CreateShl(b_.CreateAnd(h32, b_.getInt32(0x8000)), 16);
    llvm::Value* em = b_.CreateAnd(h32, b_.getInt32(0x7fff));  // exponent and mantissa
    llvm::Value* shifted = b_.CreateShl(em, 13);
    // normal: rebias the exponent (127 - 15); inf/nan: the top exponent
    llvm::Value* bits = b_.CreateSelect(b_.CreateICmpUGE(em, b_.getInt32(0x7c00)),
                                        b_.CreateOr(shifted, b_.getInt32(0x7f800000)),
                                        b_.CreateAdd(shifted, b_.getInt32(0x38000000)));
    // subnormal (and zero): mantissa * 2^-24, exact in float32 and itself normal
    llvm::Value* sub = b_.CreateFMul(b_.CreateUIToFP(em, b_.getFloatTy()), llvm::ConstantFP::get(b_.getFloatTy(), 0x1p-24));
    llvm::Value* mag = b_.CreateSelect(b_.CreateICmpULT(em, b_.getInt32(0x400)), b_.CreateBitCast(sub, b_.getInt32Ty()), bits);
    return b_.CreateBitCast(b_.CreateOr(mag, sign), b_.getFloatTy());
  }

  /// float32 bits `u` (not NaN's) with the low half rounded into the high half, ties to even
  /// (c10::BFloat16's rounding): the high 16 bits are the bfloat16 value.
  llvm::Value* bf16_rounded(llvm::Value* u) {
    llvm::Value* bias = b_.CreateAdd(b_.CreateAnd(b_.CreateLShr(u, 16), b_.getInt32(1)), b_.getInt32(0x7fff));
    return b_.CreateAdd(u, bias);
  }

  /// float32 `x` rounded to the nearest half value (ties to even), as its 16 bits: overflow
  /// gives infinity, NaN the quiet NaN c10 gives (0x7fc0 for bfloat16, 0x7e00 for float16).
  llvm::Value* narrow_half(llvm::Value* x, DType t) {
    llvm::Value* u = b_.CreateBitCast(x, b_.getInt32Ty());
    if (t == DType::BFloat16) {
      llvm::Value* rounded = b_.CreateTrunc(b_.CreateLShr(bf16_rounded(u), 16), b_.getInt16Ty());
      return b_.CreateSelect(b_.CreateFCmpUNO(x, x), b_.getInt16(0x7fc0), rounded);
    }
    llvm::Value* sign = b_.CreateAnd(u, b_.getInt32(0x80000000u));
    llvm::Value* a = b_.CreateXor(u, sign);  // |x|
    // |x| >= 65536 (or inf, nan): infinity, or the quiet NaN
    llvm::Value* big = b_.CreateSelect(b_.CreateICmpUGT(a, b_.getInt32(0x7f800000)), b_.getInt32(0x7e00), b_.getInt32(0x7c00));
    // |x| < 2^-14, a subnormal (or zero) result: adding 0.5 rounds the mantissa into place (the
    // FPU's ties-to-even), and 0.5's bits come off again
    llvm::Value* plus_half = b_.CreateFAdd(b_.CreateBitCast(a, b_.getFloatTy()), llvm::ConstantFP::get(b_.getFloatTy(), 0.5));
    llvm::Value* sub = b_.CreateSub(b_.CreateBitCast(plus_half, b_.getInt32Ty()), b_.getInt32(0x3f000000));
    // normal: rebias the exponent (15 - 127), round the 13 dropped bits to even
    llvm::Value* odd = b_.CreateAnd(b_.CreateLShr(a, 13), b_.getInt32(1));
    llvm::Value* norm = b_.CreateLShr(b_.CreateAdd(b_.CreateAdd(a, b_.getInt32(0xc8000fffu)), odd), 13);
    llvm::Value* mag = b_.CreateSelect(b_.CreateICmpUGE(a, b_.getInt32(0x47800000)), big,
                                       b_.CreateSelect(b_.CreateICmpULT(a, b_.getInt32(0x38800000)), sub, norm));
    return b_.CreateTrunc(b_.CreateOr(mag, b_.CreateLShr(sign, 16)), b_.getInt16Ty());
  }

  /// float32 `x` rounded to the half type and kept as float32 (a cast to it in registers).
  llvm::Value* round_half(llvm::Value* x, DType t) {
    if (t == DType::Float16) {
      // Round in float32 itself, not through the 16 bits (half the operations): adding C, x's
      // sign times 2^(e + 13) for x's exponent e (at least float16's smallest normal's, -14),
      // leaves the sum an ulp of exactly float16's quantum at x, so the FPU rounds x to even
      // there, and subtracting C is exact. |x| >= 65520 rounds to infinity; copysign keeps
      // the sign of a zero result (-1e-9 is -0.0 in float16).
      llvm::Value* u = b_.CreateBitCast(x, b_.getInt32Ty());
      llvm::Value* e = b_.CreateBinaryIntrinsic(llvm::Intrinsic::umax, b_.CreateAnd(u, b_.getInt32(0x7f800000)),
                                                b_.getInt32(113u << 23));
      llvm::Value* c = b_.CreateBitCast(b_.CreateOr(b_.CreateAnd(u, b_.getInt32(0x80000000u)),
                                                    b_.CreateAdd(e, b_.getInt32(13u << 23))),
                                        b_.getFloatTy());
      llvm::Value* r = b_.CreateFSub(b_.CreateFAdd(x, c), c);
      r = b_.CreateBinaryIntrinsic(llvm::Intrinsic::copysign, r, x);
      llvm::Value* big = b_.CreateFCmpOGE(intrinsic(llvm::Intrinsic::fabs, x), llvm::ConstantFP::get(b_.getFloatTy(), 65520.0));
      llvm::Value* inf = b_.CreateBinaryIntrinsic(llvm::Intrinsic::copysign,
                                                  llvm::ConstantFP::getInfinity(b_.getFloatTy()), x);
      return b_.CreateSelect(big, inf, r);
    }
    // bfloat16 is float32's top half: round the low half away in place
    llvm::Value* u = b_.CreateBitCast(x, b_.getInt32Ty());
    llvm::Value* r = b_.CreateBitCast(b_.CreateAnd(bf16_rounded(u), b_.getInt32(0xffff0000u)), b_.getFloatTy());
    return b_.CreateSelect(b_.CreateFCmpUNO(x, x), x, r);
  }

  /// Emits `loops` as a nest (the first one over [begin, end) when `begin` is given) and calls
  /// `body` inside the innermost. The loop vectoriser takes the innermost loops by itself (the
  /// alias scopes remove the need for runtime checks); forcing it would only add warnings.
  void emit_nest(const std::vector<Loop>& loops, size_t level, llvm::Value* begin, llvm::Value* end,
                 const std::function<void()>& body, bool body_loops = false) {
    if (level == loops.size()) {
      body();
      return;
    }
    const Loop& loop = loops[level];
    llvm::Value* lo = level == 0 && begin ? begin : b_.getInt64(0);
    llvm::Value* hi = level == 0 && end ? end : loop.extent_param >= 0 ? param(loop.extent_param) : b_.getInt64(loop.var->ival);
    auto* pre = b_.GetInsertBlock();
    auto* header = llvm::BasicBlock::Create(c_, fmt_name("loop", loop.var->var_id), f_);
    auto* exit = llvm::BasicBlock::Create(c_, fmt_name("loop.end", loop.var->var_id), f_);
    b_.CreateCondBr(b_.CreateICmpSLT(lo, hi), header, exit);
    b_.SetInsertPoint(header);
    auto* phi = b_.CreatePHI(b_.getInt64Ty(), 2, fmt_name("i", loop.var->var_id));
    phi->addIncoming(lo, pre);
    vars_[loop.var] = phi;
    emit_nest(loops, level + 1, nullptr, nullptr, body, body_loops);
    auto* next = b_.CreateAdd(phi, b_.getInt64(1), "", /*HasNUW=*/true, /*HasNSW=*/true);
    auto* latch = b_.CreateCondBr(b_.CreateICmpSLT(next, hi), header, exit);
    // A loop with loops inside is never LLVM's to vectorise: once it had fully unrolled short
    // inner loops, LLVM 16 vectorised such an outer loop with interleaved groups over a buffer
    // each iteration stores and reloads (a column reduction's accumulators) and read stale
    // values (amax over dim 0 of [2, 64]: a fuzzer finding).
    if (level + 1 < loops.size() || body_loops) latch->setMetadata(llvm::LLVMContext::MD_loop, no_vectorize_md());
    phi->addIncoming(next, b_.GetInsertBlock());
    b_.SetInsertPoint(exit);
  }

  llvm::MDNode* no_vectorize_md() {
    llvm::Metadata* off[] = {llvm::MDString::get(c_, "llvm.loop.vectorize.enable"),
                             llvm::ConstantAsMetadata::get(b_.getFalse())};
    llvm::TempMDTuple self = llvm::MDNode::getTemporary(c_, {});
    llvm::Metadata* ops[] = {self.get(), llvm::MDNode::get(c_, off)};
    llvm::MDNode* loop = llvm::MDNode::get(c_, ops);
    loop->replaceOperandWith(0, loop);
    return loop;
  }

  void emit_loops(size_t, llvm::Value* begin, llvm::Value* end) {
    bool phase_loops = false;
    for (const Phase& ph : k_.phases) phase_loops |= !ph.loops.empty();
    emit_nest(
        k_.loops, 0, begin, end,
        [&] {
          for (const Phase& ph : k_.phases) emit_phase(ph);
        },
        phase_loops);
  }

  // ---- reductions -----------------------------------------------------------------------

  struct Acc {
    llvm::AllocaInst* value = nullptr;
    llvm::AllocaInst* aux = nullptr;  // Max/Min: NaN seen (i1); ArgMax/ArgMin: best position (i64)
  };

  llvm::AllocaInst* entry_alloca(llvm::Type* t, const char* name) {
    llvm::IRBuilder<> eb(&f_->getEntryBlock(), f_->getEntryBlock().begin());
    return eb.CreateAlloca(t, nullptr, name);
  }

  llvm::Value* reduce_init(const Reduction& r) {
    llvm::Type* t = reg_type(r.acc_dtype);
    bool fl = is_float(r.acc_dtype);
    bool uns = r.acc_dtype == DType::UInt8 || r.acc_dtype == DType::Bool;
    switch (r.op) {
      case ReduceOp::Sum: return fl ? llvm::ConstantFP::get(t, 0.0) : llvm::ConstantInt::get(t, 0);
      case ReduceOp::Prod: return fl ? llvm::ConstantFP::get(t, 1.0) : llvm::ConstantInt::get(t, 1);
      case ReduceOp::Any: return b_.getFalse();
      case ReduceOp::All: return b_.getTrue();
      case ReduceOp::Max: case ReduceOp::ArgMax:
        if (fl) return llvm::ConstantFP::getInfinity(t, /*Negative=*/true);
        return uns ? llvm::ConstantInt::get(t, 0)
                   : llvm::ConstantInt::get(t, llvm::APInt::getSignedMinValue(t->getIntegerBitWidth()));
      case ReduceOp::Min: case ReduceOp::ArgMin:
        if (fl) return llvm::ConstantFP::getInfinity(t, /*Negative=*/false);
        return uns ? llvm::ConstantInt::get(t, llvm::APInt::getMaxValue(t->getIntegerBitWidth()))
                   : llvm::ConstantInt::get(t, llvm::APInt::getSignedMaxValue(t->getIntegerBitWidth()));
    }
    KILN_UNREACHABLE("reduce op");
  }

  void emit_phase(const Phase& ph) {
    std::vector<Acc> accs(ph.reductions.size());
    for (size_t i = 0; i < ph.reductions.size(); ++i) {
      const Reduction& r = ph.reductions[i];
      Acc& a = accs[i];
      a.value = entry_alloca(reg_type(r.acc_dtype), "acc");
      b_.CreateStore(reduce_init(r), a.value);
      if (r.op == ReduceOp::Max || r.op == ReduceOp::Min) {
        a.aux = entry_alloca(b_.getInt1Ty(), "acc.nan");
        b_.CreateStore(b_.getFalse(), a.aux);
      } else if (r.op == ReduceOp::ArgMax || r.op == ReduceOp::ArgMin) {
        a.aux = entry_alloca(b_.getInt64Ty(), "acc.pos");
        b_.CreateStore(b_.getInt64(0), a.aux);
      }
    }
    emit_nest(ph.loops, 0, nullptr, nullptr, [&] {
      memo_.clear();
      for (size_t i = 0; i < ph.reductions.size(); ++i) accumulate(ph.reductions[i], accs[i]);
      for (size_t i = 0; i < ph.reductions.size(); ++i)  // a scan's stores read the value so far
        if (ph.reductions[i].running) placeholders_[ph.reductions[i].slot] = finish(ph.reductions[i], accs[i]);
      for (const Store& s : ph.stores) emit_store(s);
    });
    memo_.clear();
    for (size_t i = 0; i < ph.reductions.size(); ++i) placeholders_[ph.reductions[i].slot] = finish(ph.reductions[i], accs[i]);
  }

  static llvm::Instruction* reassoc(llvm::Value* v) {
    auto* inst = llvm::cast<llvm::Instruction>(v);
    llvm::FastMathFlags fmf;
    fmf.setAllowReassoc();
    inst->setFastMathFlags(fmf);
    return inst;
  }

  /// Whether LLVM may merge products of this value (exp, exp2, pow and sqrt emitted as
  /// intrinsics: float64 exp, every exp2, pow and sqrt).
  static bool folds_in_products(const Expr& v) {
    switch (v->op) {
      case ExprOp::Exp: return v->dtype != DType::Float32;
      case ExprOp::Exp2:
      case ExprOp::Pow:
      case ExprOp::Sqrt: return true;
      default: return false;
    }
  }

  void accumulate(const Reduction& r, Acc& a) {
    llvm::Type* t = reg_type(r.acc_dtype);
    llvm::Value* v = emit(r.value);
    bool fl = is_float(r.acc_dtype);
    bool uns = r.acc_dtype == DType::UInt8 || r.acc_dtype == DType::Bool;
    if (r.op != ReduceOp::Any && r.op != ReduceOp::All) v = cast(v, r.value->dtype, r.acc_dtype);
    llvm::Value* acc = b_.CreateLoad(t, a.value);
    llvm::Value* next = nullptr;
    switch (r.op) {
      case ReduceOp::Sum:
        // Reassociation lets LLVM keep vector partial sums (the order torch's kernels also change).
        next = fl ? reassoc(b_.CreateFAdd(acc, v)) : b_.CreateAdd(acc, v);
        break;
      case ReduceOp::Prod:
        // With reassociation allowed, InstCombine rewrites products of LLVM math intrinsics:
        // exp2(a) * exp2(b) became exp2(a + b) in a short, unrolled row, and the row
        // [exp2(1e30), exp2(-1e30)] came out inf instead of inf * 0 = nan (found by the
        // fuzzer). A fence hides such a factor from it; it also keeps the loop scalar, so it is
        // used only where the factor is one of those intrinsics.
        if (fl && folds_in_products(r.value)) v = b_.CreateArithmeticFence(v, v->getType());
        next = fl ? reassoc(b_.CreateFMul(acc, v)) : b_.CreateMul(acc, v);
        break;
      case ReduceOp::Any: next = b_.CreateOr(acc, v); break;
      case ReduceOp::All: next = b_.CreateAnd(acc, v); break;
      case ReduceOp::Max:
      case ReduceOp::Min: {
        bool mx = r.op == ReduceOp::Max;
        if (fl) {
          // maxnum ignores NaN (and vectorises as a min/max reduction); NaNs are tracked apart.
          next = b_.CreateBinaryIntrinsic(mx ? llvm::Intrinsic::maxnum : llvm::Intrinsic::minnum, acc, v);
          // No-NaN/no-signed-zero flags let LLVM 16 vectorise the min/max reduction; NaNs are
          // accounted for by the flag below, which overrides the result when set.
          llvm::FastMathFlags fmf;
          fmf.setNoNaNs();
          fmf.setNoSignedZeros();
          llvm::cast<llvm::Instruction>(next)->setFastMathFlags(fmf);
          llvm::Value* nan = b_.CreateLoad(b_.getInt1Ty(), a.aux);
          b_.CreateStore(b_.CreateOr(nan, b_.CreateFCmpUNO(v, v)), a.aux);
        } else {
          llvm::Value* better = mx ? (uns ? b_.CreateICmpUGT(v, acc) : b_.CreateICmpSGT(v, acc))
                                   : (uns ? b_.CreateICmpULT(v, acc) : b_.CreateICmpSLT(v, acc));
          next = b_.CreateSelect(better, v, acc);
        }
        break;
      }
      case ReduceOp::ArgMax:
      case ReduceOp::ArgMin: {
        bool mx = r.op == ReduceOp::ArgMax;
        llvm::Value* better;
        if (fl) {
          // torch: the first NaN wins; otherwise the first strictly better value.
          llvm::Value* cmp = mx ? b_.CreateFCmpOGT(v, acc) : b_.CreateFCmpOLT(v, acc);
          llvm::Value* nan_first = b_.CreateAnd(b_.CreateFCmpUNO(v, v), b_.CreateFCmpORD(acc, acc));
          better = b_.CreateOr(cmp, nan_first);
        } else {
          better = mx ? (uns ? b_.CreateICmpUGT(v, acc) : b_.CreateICmpSGT(v, acc))
                      : (uns ? b_.CreateICmpULT(v, acc) : b_.CreateICmpSLT(v, acc));
        }
        // The first element always wins, so a row of all -inf (or +inf) still has position 0.
        llvm::Value* pos = emit(r.position);
        llvm::Value* first = b_.CreateICmpEQ(pos, b_.getInt64(0));
        better = b_.CreateOr(better, first);
        next = b_.CreateSelect(better, v, acc);
        llvm::Value* best = b_.CreateLoad(b_.getInt64Ty(), a.aux);
        b_.CreateStore(b_.CreateSelect(better, pos, best), a.aux);
        break;
      }
    }
    b_.CreateStore(next, a.value);
  }

  llvm::Value* finish(const Reduction& r, const Acc& a) {
    llvm::Type* t = reg_type(r.acc_dtype);
    llvm::Value* acc = b_.CreateLoad(t, a.value);
    switch (r.op) {
      case ReduceOp::Max:
      case ReduceOp::Min:
        if (is_float(r.acc_dtype))
          acc = b_.CreateSelect(b_.CreateLoad(b_.getInt1Ty(), a.aux), llvm::ConstantFP::getNaN(t), acc);
        break;
      case ReduceOp::ArgMax:
      case ReduceOp::ArgMin:
        return b_.CreateLoad(b_.getInt64Ty(), a.aux);
      default:
        break;
    }
    return cast(acc, r.acc_dtype, r.out_dtype);
  }

  void emit_store(const Store& s) {
    llvm::Value* idx = emit(s.index);
    DType t = p_.buffers[s.buffer].dtype;
    // A value rounded to the half type just before its store narrows once, from the unrounded
    // float32 (rounding is idempotent), skipping the rounding in registers.
    bool narrow_operand = is_half(t) && s.value->op == ExprOp::Cast && s.value->dtype == t &&
                          !is_half(s.value->a->dtype) && !memo_.count(s.value);
    llvm::Value* v = narrow_operand ? cast(emit(s.value->a), s.value->a->dtype, DType::Float32) : emit(s.value);
    if (t == DType::Bool) v = b_.CreateZExt(v, b_.getInt8Ty());
    if (is_half(t)) v = narrow_half(v, t);
    auto* addr = b_.CreateInBoundsGEP(mem_type(t), buf_ptr_[s.buffer], idx);
    annotate(b_.CreateStore(v, addr), s.buffer);
  }

  llvm::Value* emit(Expr e) {
    auto it = memo_.find(e);
    if (it != memo_.end()) return it->second;
    llvm::Value* v = emit_uncached(e);
    memo_[e] = v;
    return v;
  }

  llvm::Value* param(int slot) {
    KILN_CHECK(slot >= 0 && static_cast<size_t>(slot) < params_.size(), "parameter p{} of {}", slot, params_.size());
    return params_[static_cast<size_t>(slot)];
  }

  /// A parameter as a value of `t`: an int64 as is, a float from its float64 bits (rounded to
  /// float32 as a constant of that dtype is).
  llvm::Value* param_value(Expr e) {
    llvm::Value* bits = param(static_cast<int>(e->ival));
    if (e->dtype == DType::Int64) return bits;
    KILN_CHECK(is_float(e->dtype), "parameter of dtype {}", dtype_name(e->dtype));
    llvm::Value* d = b_.CreateBitCast(bits, b_.getDoubleTy());
    return reg_type(e->dtype)->isDoubleTy() ? d : b_.CreateFPTrunc(d, reg_type(e->dtype));
  }

  llvm::Value* constant(Expr e) {
    if (is_float(e->dtype)) return llvm::ConstantFP::get(reg_type(e->dtype), e->fval);
    return llvm::ConstantInt::get(reg_type(e->dtype), static_cast<uint64_t>(e->ival), /*isSigned=*/true);
  }

  llvm::Value* intrinsic(llvm::Intrinsic::ID id, llvm::Value* x) {
    return b_.CreateUnaryIntrinsic(id, x);
  }

  /// A libm function by name (for float32 the "f"-suffixed one).
  llvm::Value* libm(const char* name, llvm::Value* x) {
    std::string fn = x->getType()->isFloatTy() ? std::string(name) + "f" : name;
    auto callee = m_.getOrInsertFunction(fn, x->getType(), x->getType());
    auto* call = b_.CreateCall(callee, {x});
    call->setDoesNotThrow();
    call->setOnlyAccessesInaccessibleMemory();
    return call;
  }

  llvm::Value* emit_uncached(Expr e) {
    switch (e->op) {
      case ExprOp::Const: return constant(e);
      case ExprOp::Param: return param_value(e);
      case ExprOp::Var: {
        auto it = vars_.find(e);
        KILN_CHECK(it != vars_.end(), "loop variable i{} used outside its loop", e->var_id);
        return it->second;
      }
      case ExprOp::Load: {
        int buf = static_cast<int>(e->ival);
        if (buf < 0) {  // a reduction's result, computed by an earlier phase
          auto it = placeholders_.find(-1 - buf);
          KILN_CHECK(it != placeholders_.end(), "reduction acc{} read before its phase", -1 - buf);
          return it->second;
        }
        KILN_CHECK(buf >= 0 && static_cast<size_t>(buf) < p_.buffers.size(), "load from buf{}", buf);
        auto* addr = b_.CreateInBoundsGEP(mem_type(e->dtype), buf_ptr_[buf], emit(e->a));
        auto* ld = b_.CreateLoad(mem_type(e->dtype), addr);
        annotate(ld, buf);
        if (e->dtype == DType::Bool) return b_.CreateICmpNE(ld, b_.getInt8(0));
        if (is_half(e->dtype)) return widen_half(ld, e->dtype);
        return ld;
      }
      case ExprOp::Cast: return cast(emit(e->a), e->a->dtype, e->dtype);
      case ExprOp::Select: return b_.CreateSelect(emit(e->a), emit(e->b), emit(e->c));
      case ExprOp::Fma: {
        // One rounding, as eager's contracted a * b + c (one instruction where the target has FMA).
        llvm::Value* a = emit(e->a);
        auto* fn = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::fma, {a->getType()});
        return b_.CreateCall(fn, {a, emit(e->b), emit(e->c)});
      }
      default: break;
    }
    if (expr_op_arity(e->op) == 1) return unary(e->op, emit(e->a), e->a->dtype);
    return binary(e->op, emit(e->a), emit(e->b), e->a->dtype);
  }

  llvm::Value* cast(llvm::Value* x, DType from, DType to) {
    // Half values are float32 in registers (Note [Half values in registers]): from one, convert
    // as from float32; to one, convert to float32 first (float64 and integers round twice, as
    // c10's conversions through float do), then round to the half type and widen back.
    if (is_half(from)) {
      if (is_half(to) && from == to) return x;
      from = DType::Float32;
    }
    if (is_half(to)) {
      return round_half(cast(x, from, DType::Float32), to);
    }
    llvm::Type* t = reg_type(to);
    if (to == DType::Bool) {
      return is_float(from) ? b_.CreateFCmpUNE(x, llvm::ConstantFP::get(x->getType(), 0.0))
                            : b_.CreateICmpNE(x, llvm::ConstantInt::get(x->getType(), 0));
    }
    bool from_unsigned = from == DType::Bool || from == DType::UInt8;
    if (is_float(from) && is_float(to)) return b_.CreateFPCast(x, t);
    if (is_float(from)) {
      // C++'s float-to-int conversion, as eager does it: through int32 (int64 for int64), then
      // truncated. NaN and values out of that range give x86's "integer indefinite" (the
      // minimum, what cvttss2si and its vector forms return): spelled out, because fptosi makes
      // them poison, and a frozen poison is any value once LLVM reasons about where x came
      // from (int32(log1p(float(-5))) came out -176).
      bool to64 = to == DType::Int64;
      llvm::Type* wide = to64 ? b_.getInt64Ty() : b_.getInt32Ty();
      double limit = to64 ? 9223372036854775808.0 : 2147483648.0;
      llvm::Value* in_range = b_.CreateAnd(b_.CreateFCmpOGE(x, llvm::ConstantFP::get(x->getType(), -limit)),
                                           b_.CreateFCmpOLT(x, llvm::ConstantFP::get(x->getType(), limit)));
      llvm::Value* indefinite = to64 ? b_.getInt64(static_cast<uint64_t>(INT64_MIN)) : b_.getInt32(static_cast<uint32_t>(INT32_MIN));
      llvm::Value* i = b_.CreateSelect(in_range, b_.CreateFreeze(b_.CreateFPToSI(x, wide)), indefinite);
      return b_.CreateTrunc(i, t);
    }
    if (is_float(to)) return from_unsigned ? b_.CreateUIToFP(x, t) : b_.CreateSIToFP(x, t);
    return b_.CreateIntCast(x, t, /*isSigned=*/!from_unsigned);
  }

  llvm::Value* unary(ExprOp op, llvm::Value* x, DType t) {
    bool f32 = t == DType::Float32;
    switch (op) {
      case ExprOp::Neg: return is_float(t) ? b_.CreateFNeg(x) : b_.CreateNeg(x);
      case ExprOp::Abs:
        if (is_float(t)) return intrinsic(llvm::Intrinsic::fabs, x);
        if (t == DType::UInt8) return x;
        return b_.CreateSelect(b_.CreateICmpSLT(x, llvm::ConstantInt::get(x->getType(), 0)), b_.CreateNeg(x), x);
      case ExprOp::Exp: return f32 ? emit_exp_f32(b_, x) : intrinsic(llvm::Intrinsic::exp, x);
      case ExprOp::Exp2: return intrinsic(llvm::Intrinsic::exp2, x);
      case ExprOp::Expm1: return f32 ? emit_expm1_f32(b_, x) : libm("expm1", x);
      case ExprOp::Log: return f32 ? emit_log_f32(b_, x) : intrinsic(llvm::Intrinsic::log, x);
      case ExprOp::Log2: return intrinsic(llvm::Intrinsic::log2, x);
      case ExprOp::Log1p: return f32 ? emit_log1p_f32(b_, x) : libm("log1p", x);
      case ExprOp::Sqrt: return intrinsic(llvm::Intrinsic::sqrt, x);
      case ExprOp::Sin: return intrinsic(llvm::Intrinsic::sin, x);
      case ExprOp::Cos: return intrinsic(llvm::Intrinsic::cos, x);
      case ExprOp::Tan: return libm("tan", x);
      case ExprOp::Tanh: return f32 ? emit_tanh_f32(b_, x) : libm("tanh", x);
      case ExprOp::Erf: return f32 ? emit_erf_f32(b_, x) : libm("erf", x);
      case ExprOp::Floor: return intrinsic(llvm::Intrinsic::floor, x);
      case ExprOp::Ceil: return intrinsic(llvm::Intrinsic::ceil, x);
      case ExprOp::Round: return intrinsic(llvm::Intrinsic::roundeven, x);
      case ExprOp::Trunc: return intrinsic(llvm::Intrinsic::trunc, x);
      case ExprOp::Not: return b_.CreateNot(x);
      case ExprOp::BitNot: return b_.CreateNot(x);
      case ExprOp::IsNan: return b_.CreateFCmpUNO(x, x);
      default: KILN_UNREACHABLE(std::string("unary ") + expr_op_name(op));
    }
  }

  /// Integer division and remainder without traps: a zero divisor records the status word
  /// (the runtime reruns the call eagerly, which raises torch's error) and MIN / -1 wraps.
  llvm::Value* int_divmod(ExprOp op, llvm::Value* a, llvm::Value* bv, bool is_unsigned) {
    auto* ty = a->getType();
    auto* zero = llvm::ConstantInt::get(ty, 0);
    auto* one = llvm::ConstantInt::get(ty, 1);
    auto* is_zero = b_.CreateICmpEQ(bv, zero);
    auto* st = b_.CreateLoad(b_.getInt32Ty(), status_);
    b_.CreateStore(b_.CreateOr(st, b_.CreateZExt(is_zero, b_.getInt32Ty())), status_);
    llvm::Value* safe = b_.CreateSelect(is_zero, one, bv);
    if (is_unsigned) {
      bool div = op == ExprOp::Div || op == ExprOp::TruncDiv;
      return div ? b_.CreateUDiv(a, safe) : b_.CreateURem(a, safe);
    }
    auto* minus_one = llvm::ConstantInt::get(ty, -1, true);
    auto* is_m1 = b_.CreateICmpEQ(safe, minus_one);
    safe = b_.CreateSelect(is_m1, one, safe);  // a / -1 == -a (wrapping), a % -1 == 0
    llvm::Value* q = b_.CreateSDiv(a, safe);
    llvm::Value* r = b_.CreateSRem(a, safe);
    q = b_.CreateSelect(is_m1, b_.CreateNeg(a), q);
    r = b_.CreateSelect(is_m1, zero, r);
    switch (op) {
      case ExprOp::TruncDiv: return q;
      case ExprOp::Fmod: return r;
      case ExprOp::Div: {  // floor division: step down when the signs differ and r != 0
        auto* adjust = b_.CreateAnd(b_.CreateICmpNE(r, zero),
                                    b_.CreateICmpNE(b_.CreateICmpSLT(r, zero), b_.CreateICmpSLT(safe, zero)));
        return b_.CreateSub(q, b_.CreateZExt(adjust, ty));
      }
      case ExprOp::Mod: {  // floor modulo: the result takes the divisor's sign
        auto* adjust = b_.CreateAnd(b_.CreateICmpNE(r, zero),
                                    b_.CreateICmpNE(b_.CreateICmpSLT(r, zero), b_.CreateICmpSLT(safe, zero)));
        return b_.CreateSelect(adjust, b_.CreateAdd(r, safe), r);
      }
      default: KILN_UNREACHABLE("int_divmod");
    }
  }

  llvm::Value* binary(ExprOp op, llvm::Value* a, llvm::Value* bv, DType t) {
    bool fl = is_float(t);
    bool uns = t == DType::UInt8 || t == DType::Bool;
    switch (op) {
      case ExprOp::Add: return fl ? b_.CreateFAdd(a, bv) : b_.CreateAdd(a, bv);
      case ExprOp::Sub: return fl ? b_.CreateFSub(a, bv) : b_.CreateSub(a, bv);
      case ExprOp::Mul: return fl ? b_.CreateFMul(a, bv) : b_.CreateMul(a, bv);
      case ExprOp::Div:
      case ExprOp::TruncDiv:
      case ExprOp::Mod:
        if (fl) {
          KILN_CHECK(op == ExprOp::Div, "{} on floats is lowered before codegen", expr_op_name(op));
          return b_.CreateFDiv(a, bv);
        }
        return int_divmod(op, a, bv, uns);
      case ExprOp::Fmod: return fl ? b_.CreateFRem(a, bv) : int_divmod(op, a, bv, uns);
      case ExprOp::Pow: {
        auto* fn = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::pow, {a->getType()});
        return b_.CreateCall(fn, {a, bv});
      }
      case ExprOp::Max:
      case ExprOp::Min: {
        // torch.maximum: NaN wins; otherwise a when a > b, else b.
        bool mx = op == ExprOp::Max;
        if (fl) {
          auto* pick_a = b_.CreateOr(b_.CreateFCmpUNO(a, a), mx ? b_.CreateFCmpOGT(a, bv) : b_.CreateFCmpOLT(a, bv));
          return b_.CreateSelect(pick_a, a, bv);
        }
        auto* gt = uns ? (mx ? b_.CreateICmpUGT(a, bv) : b_.CreateICmpULT(a, bv))
                       : (mx ? b_.CreateICmpSGT(a, bv) : b_.CreateICmpSLT(a, bv));
        return b_.CreateSelect(gt, a, bv);
      }
      case ExprOp::Eq: return fl ? b_.CreateFCmpOEQ(a, bv) : b_.CreateICmpEQ(a, bv);
      case ExprOp::Ne: return fl ? b_.CreateFCmpUNE(a, bv) : b_.CreateICmpNE(a, bv);
      case ExprOp::Lt: return fl ? b_.CreateFCmpOLT(a, bv) : uns ? b_.CreateICmpULT(a, bv) : b_.CreateICmpSLT(a, bv);
      case ExprOp::Le: return fl ? b_.CreateFCmpOLE(a, bv) : uns ? b_.CreateICmpULE(a, bv) : b_.CreateICmpSLE(a, bv);
      case ExprOp::Gt: return fl ? b_.CreateFCmpOGT(a, bv) : uns ? b_.CreateICmpUGT(a, bv) : b_.CreateICmpSGT(a, bv);
      case ExprOp::Ge: return fl ? b_.CreateFCmpOGE(a, bv) : uns ? b_.CreateICmpUGE(a, bv) : b_.CreateICmpSGE(a, bv);
      case ExprOp::IndexCheck: {
        // An index out of [0, n): flag the call (eager redoes it and raises torch's IndexError)
        // and read element 0 instead, never out of bounds.
        llvm::Value* oob = b_.CreateICmpUGE(a, bv);
        llvm::Value* st = b_.CreateLoad(b_.getInt32Ty(), status_);
        b_.CreateStore(b_.CreateOr(st, b_.CreateZExt(oob, b_.getInt32Ty())), status_);
        return b_.CreateSelect(oob, llvm::ConstantInt::get(a->getType(), 0), a);
      }
      case ExprOp::And: return b_.CreateAnd(a, bv);
      case ExprOp::Or: return b_.CreateOr(a, bv);
      case ExprOp::Xor: return b_.CreateXor(a, bv);
      default: KILN_UNREACHABLE(std::string("binary ") + expr_op_name(op));
    }
  }

  llvm::LLVMContext& c_;
  llvm::Module& m_;
  llvm::IRBuilder<> b_;
  const KernelProgram& p_;
  const Kernel& k_;
  std::string symbol_;
  llvm::Function* f_ = nullptr;
  llvm::Value* status_ = nullptr;
  std::map<int, llvm::Value*> buf_ptr_;
  std::vector<llvm::Value*> params_;  // a kernel template's parameters, loaded at entry
  std::vector<llvm::MDNode*> scope_md_, noalias_md_;
  std::unordered_map<Expr, llvm::Value*> vars_;
  std::unordered_map<Expr, llvm::Value*> memo_;
  std::map<int, llvm::Value*> placeholders_;
};

}  // namespace

namespace {
/// Emits, verifies, optimises at `opt_level` and loads the program's kernels into `code`.
void emit_and_load(const KernelProgram& p, int opt_level, CpuCode& code) {
  auto t0 = std::chrono::steady_clock::now();
  // Names depend on nothing but the program (each module has a JITDylib of its own), so the
  // same program emits the same IR in every process and its object comes from the disk cache.
  auto ctx = std::make_unique<llvm::LLVMContext>();
  auto m = std::make_unique<llvm::Module>("kiln_program", *ctx);
  code.symbols.clear();
  code.text = ModuleText{};
  for (const Kernel& k : p.kernels) {
    std::string symbol = "kiln_" + k.name;
    KernelEmitter(*m, p, k, symbol).emit();
    code.symbols.push_back(symbol);
  }
  std::string err;
  llvm::raw_string_ostream es(err);
  if (llvm::verifyModule(*m, &es)) throw InternalError("kiln: generated LLVM IR is invalid: " + es.str());
  code.emit_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  code.jit = JitTimes{};
  code.module = jit_add_module(std::move(ctx), std::move(m), opt_level, &code.text, &code.jit);
}
}  // namespace

CpuCode compile_cpu(const KernelProgram& p, const CodegenOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  CpuCode code;
  if (opts.inject_llvm_failure)
    throw InternalError("kiln: LLVM compile failed (injected by KILN_INJECT_FAILURE=llvm)");
  try {
    emit_and_load(p, opts.opt_level, code);
  } catch (const InternalError& e) {
    // LLVM's code generator can fail on a pattern its vectorisers made (LLVM 16, AVX-512 mask
    // broadcasts): the same kernels without vectorisation (O1) are still correct. A second
    // failure propagates, and the function runs eagerly with the reason.
    if (opts.opt_level < 2 || std::string(e.what()).find("machine code") == std::string::npos) throw;
    emit_and_load(p, 1, code);
    code.text.module_ir = "; LLVM failed at O" + std::to_string(opts.opt_level) + " (" +
                          std::string(e.what()).substr(0, std::string(e.what()).find('\n')) +
                          "); compiled at O1\n" + code.text.module_ir;
  }
  for (const auto& s : code.symbols) code.fns.push_back(reinterpret_cast<KernelFn>(code.module->lookup(s)));
  code.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return code;
}

}  // namespace kiln::cpu
