/// \file llvm_math_test.cpp
/// Tests for codegen_cpu/llvm_math: each emitter is placed in the body of a scalar loop
/// `void kernel(const float* in, float* out, int64_t n)`, optimized with LLVM's O3 pipeline for
/// the host CPU, JIT-compiled with ORC LLJIT and run over millions of inputs. Results are
/// compared with the double-precision libm result rounded to float (max ulp distance, printed
/// for the record) and with PyTorch's special values. Also checks that the loop is really
/// vectorized and contains no library calls, that the emitters accept vector-typed operands,
/// and (on x86-64) that the accuracy holds when the target has no FMA.
#include "codegen_cpu/llvm_math.h"

#include <gtest/gtest.h>
#include <llvm/ADT/StringMap.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/ExecutionEngine/Orc/ThreadSafeModule.h>
#include <llvm/IR/Function.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>
#include <llvm/TargetParser/Host.h>
#include <llvm/TargetParser/Triple.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <regex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace kiln::cpu {
namespace {

using Emitter = llvm::Value* (*)(llvm::IRBuilder<>&, llvm::Value*);
using KernelFn = void (*)(const float*, float*, int64_t);

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kDenormMin = std::numeric_limits<float>::denorm_min();
constexpr float kFltMin = std::numeric_limits<float>::min();
constexpr float kFltMax = std::numeric_limits<float>::max();

/// Output sentinel: a NaN with a payload no emitter produces, so an element the kernel forgot to
/// write is reported as a wrong NaN rather than silently matching an expected NaN.
constexpr uint32_t kSentinelBits = 0x7fbadbadu;

uint32_t float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
float bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

/// Distance in ulps between two floats on the ordered integer line (+0 and -0 coincide, and
/// FLT_MAX and inf are 1 apart). Two NaNs are 0 apart, a NaN and a number infinitely far.
double ulp_distance(float a, float b) {
  if (std::isnan(a) || std::isnan(b))
    return std::isnan(a) && std::isnan(b) ? 0.0 : std::numeric_limits<double>::infinity();
  auto key = [](float v) {
    uint32_t u = float_bits(v);
    int64_t mag = u & 0x7fffffffu;
    return (u >> 31) ? -mag : mag;
  };
  return static_cast<double>(std::llabs(key(a) - key(b)));
}

// --- Target description and JIT ------------------------------------------------------------

struct HostTarget {
  std::string triple;
  std::string cpu;
  std::vector<std::string> features;  ///< "+avx2", "-avx512f", ...
};

/// The host's triple, CPU name and full feature list (always passed explicitly: the CPU name
/// alone misses features such as AVX-512 on some CPUs and on virtual machines), followed by
/// `extra_features`.
HostTarget host_target(const std::vector<std::string>& extra_features = {}) {
  HostTarget t;
  t.triple = llvm::sys::getProcessTriple();
  t.cpu = llvm::sys::getHostCPUName().str();
  llvm::StringMap<bool> host_features;
  if (llvm::sys::getHostCPUFeatures(host_features)) {
    for (const auto& kv : host_features)
      t.features.push_back((kv.getValue() ? "+" : "-") + kv.getKey().str());
  }
  for (const auto& f : extra_features) t.features.push_back(f);
  return t;
}

bool host_is_x86() { return llvm::Triple(llvm::sys::getProcessTriple()).isX86(); }

void init_llvm_once() {
  static bool done = [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    llvm::InitializeNativeTargetAsmParser();
    return true;
  }();
  (void)done;
}

template <typename T>
T check_expected(llvm::Expected<T> v) {
  if (!v) {
    std::string msg = llvm::toString(v.takeError());
    ADD_FAILURE() << msg;
    throw std::runtime_error(msg);
  }
  return std::move(*v);
}

/// A JIT-compiled `void kernel(const float* in, float* out, int64_t n)` computing
/// out[i] = emit(in[i]). With width == 1 the loop is scalar (the loop vectorizer is expected
/// to widen it); with width > 1 the body itself works on <width x float> and n must be a
/// multiple of width.
class JitKernel {
 public:
  JitKernel(Emitter emit, unsigned width, const HostTarget& target) {
    init_llvm_once();
    llvm::orc::JITTargetMachineBuilder jtmb{llvm::Triple(target.triple)};
    jtmb.setCPU(target.cpu);
    jtmb.addFeatures(target.features);
    jtmb.setCodeGenOptLevel(llvm::CodeGenOpt::Aggressive);
    std::unique_ptr<llvm::TargetMachine> tm = check_expected(jtmb.createTargetMachine());

    auto ctx = std::make_unique<llvm::LLVMContext>();
    auto mod = std::make_unique<llvm::Module>("llvm_math_test", *ctx);
    mod->setTargetTriple(target.triple);
    mod->setDataLayout(tm->createDataLayout());
    build_kernel(*mod, emit, width, target);
    optimize(*mod, *tm);
    llvm::raw_string_ostream os(ir_);
    mod->print(os, nullptr);
    os.flush();

    jit_ = check_expected(llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(jtmb).create());
    llvm::cantFail(jit_->addIRModule(llvm::orc::ThreadSafeModule(std::move(mod), std::move(ctx))));
    fn_ = check_expected(jit_->lookup("kernel")).toPtr<KernelFn>();
    width_ = width;
  }

  /// Runs the kernel; the output is poisoned with the sentinel first.
  std::vector<float> run(const std::vector<float>& in) const {
    EXPECT_EQ(in.size() % width_, 0u);
    std::vector<float> out(in.size(), bits_float(kSentinelBits));
    fn_(in.data(), out.data(), static_cast<int64_t>(in.size()));
    return out;
  }

  float run1(float x) const {
    std::vector<float> in(width_, x);
    return run(in)[0];
  }

  const std::string& optimized_ir() const { return ir_; }

 private:
  static void build_kernel(llvm::Module& mod, Emitter emit, unsigned width,
                           const HostTarget& target) {
    llvm::LLVMContext& ctx = mod.getContext();
    llvm::Type* ptr = llvm::PointerType::get(ctx, 0);
    llvm::Type* i64 = llvm::Type::getInt64Ty(ctx);
    llvm::Type* f32 = llvm::Type::getFloatTy(ctx);
    llvm::Type* elt = width == 1 ? f32 : llvm::FixedVectorType::get(f32, width);
    auto* fty = llvm::FunctionType::get(llvm::Type::getVoidTy(ctx), {ptr, ptr, i64}, false);
    auto* fn = llvm::Function::Create(fty, llvm::Function::ExternalLinkage, "kernel", mod);
    fn->addFnAttr("target-cpu", target.cpu);
    std::string features;
    for (const auto& f : target.features) features += (features.empty() ? "" : ",") + f;
    fn->addFnAttr("target-features", features);
    fn->addFnAttr(llvm::Attribute::NoUnwind);
    for (unsigned i = 0; i < 2; ++i) fn->addParamAttr(i, llvm::Attribute::NoAlias);
    fn->addParamAttr(0, llvm::Attribute::ReadOnly);
    llvm::Value* in = fn->getArg(0);
    llvm::Value* out = fn->getArg(1);
    llvm::Value* n = fn->getArg(2);

    auto* entry = llvm::BasicBlock::Create(ctx, "entry", fn);
    auto* loop = llvm::BasicBlock::Create(ctx, "loop", fn);
    auto* exit = llvm::BasicBlock::Create(ctx, "exit", fn);
    llvm::IRBuilder<> b(entry);
    llvm::Value* step = b.getInt64(width);
    b.CreateCondBr(b.CreateICmpSGT(n, b.getInt64(0)), loop, exit);

    b.SetInsertPoint(loop);
    llvm::PHINode* i = b.CreatePHI(i64, 2, "i");
    i->addIncoming(b.getInt64(0), entry);
    llvm::Value* v = b.CreateAlignedLoad(elt, b.CreateGEP(f32, in, i), llvm::Align(4));
    size_t blocks_before = fn->size();
    llvm::Value* r = emit(b, v);
    // The emitters must be straight-line code: no new blocks, same insertion block.
    EXPECT_EQ(fn->size(), blocks_before);
    EXPECT_EQ(b.GetInsertBlock(), loop);
    EXPECT_EQ(r->getType(), elt);
    b.CreateAlignedStore(r, b.CreateGEP(f32, out, i), llvm::Align(4));
    llvm::Value* next = b.CreateAdd(i, step);
    i->addIncoming(next, loop);
    b.CreateCondBr(b.CreateICmpSLT(next, n), loop, exit);

    b.SetInsertPoint(exit);
    b.CreateRetVoid();
    std::string err;
    llvm::raw_string_ostream es(err);
    EXPECT_FALSE(llvm::verifyModule(mod, &es)) << es.str();
  }

  static void optimize(llvm::Module& mod, llvm::TargetMachine& tm) {
    llvm::LoopAnalysisManager lam;
    llvm::FunctionAnalysisManager fam;
    llvm::CGSCCAnalysisManager cgam;
    llvm::ModuleAnalysisManager mam;
    llvm::PassBuilder pb(&tm);
    pb.registerModuleAnalyses(mam);
    pb.registerCGSCCAnalyses(cgam);
    pb.registerFunctionAnalyses(fam);
    pb.registerLoopAnalyses(lam);
    pb.crossRegisterProxies(lam, fam, cgam, mam);
    llvm::ModulePassManager mpm = pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3);
    mpm.run(mod, mam);
  }

  std::unique_ptr<llvm::orc::LLJIT> jit_;
  KernelFn fn_ = nullptr;
  unsigned width_ = 1;
  std::string ir_;
};

// --- Functions under test ------------------------------------------------------------------

enum class Sampling { kExpLike, kSaturating, kLog, kLog1p };

struct MathFn {
  const char* name;
  Emitter emit;
  double (*reference)(double);
  double max_ulp;
  Sampling sampling;
  double range;  ///< half-width of the "interesting" uniform range (kExpLike / kSaturating)
};

double ref_exp(double x) { return std::exp(x); }
double ref_expm1(double x) { return std::expm1(x); }
double ref_log(double x) { return std::log(x); }
double ref_log1p(double x) { return std::log1p(x); }
double ref_tanh(double x) { return std::tanh(x); }
double ref_erf(double x) { return std::erf(x); }
double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

const MathFn kFunctions[] = {
    {"exp", emit_exp_f32, ref_exp, 3, Sampling::kExpLike, 104},
    {"expm1", emit_expm1_f32, ref_expm1, 3, Sampling::kExpLike, 20},
    {"log", emit_log_f32, ref_log, 3, Sampling::kLog, 0},
    {"log1p", emit_log1p_f32, ref_log1p, 3, Sampling::kLog1p, 0},
    {"tanh", emit_tanh_f32, ref_tanh, 3, Sampling::kSaturating, 10},
    {"erf", emit_erf_f32, ref_erf, 4, Sampling::kSaturating, 4.5},
    {"sigmoid", emit_sigmoid_f32, ref_sigmoid, 3, Sampling::kExpLike, 110},
};

const MathFn& find_fn(const std::string& name) {
  for (const auto& f : kFunctions)
    if (name == f.name) return f;
  throw std::runtime_error("no such function " + name);
}

/// Log-uniform magnitude in [lo, hi].
float log_uniform(std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> d(std::log(lo), std::log(hi));
  return static_cast<float>(std::exp(d(rng)));
}

/// Inputs: 1e6 uniform in [-100, 100] (exp-like) or log-uniform positives 1e-38..1e38 (logs),
/// plus denser samples where the function is not saturated, tiny arguments of both signs,
/// random denormals and the usual special values.
std::vector<float> make_samples(const MathFn& fn, size_t n_main = 1000000) {
  std::mt19937_64 rng(0x6b696c6e);  // fixed seed: reproducible failures
  std::vector<float> s;
  auto uniform = [&](double lo, double hi, size_t count) {
    std::uniform_real_distribution<double> d(lo, hi);
    for (size_t k = 0; k < count; ++k) s.push_back(static_cast<float>(d(rng)));
  };
  auto signed_log_uniform = [&](double lo, double hi, size_t count) {
    std::bernoulli_distribution sign(0.5);
    for (size_t k = 0; k < count; ++k) {
      float v = log_uniform(rng, lo, hi);
      s.push_back(sign(rng) ? -v : v);
    }
  };
  switch (fn.sampling) {
    case Sampling::kExpLike:
    case Sampling::kSaturating:
      uniform(-100, 100, n_main);
      uniform(-fn.range, fn.range, n_main / 4);
      signed_log_uniform(1e-38, fn.range, n_main / 4);
      break;
    case Sampling::kLog:
      for (size_t k = 0; k < n_main; ++k) s.push_back(log_uniform(rng, 1e-38, 1e38));
      uniform(0.5, 2.0, n_main / 4);
      break;
    case Sampling::kLog1p:
      for (size_t k = 0; k < n_main; ++k) s.push_back(log_uniform(rng, 1e-38, 1e38));
      uniform(-1.0, 1.0, n_main / 4);
      for (size_t k = 0; k < n_main / 4; ++k) s.push_back(-log_uniform(rng, 1e-38, 1.0));
      break;
  }
  // Random denormals (and their negatives).
  std::uniform_int_distribution<uint32_t> mant(1, 0x7fffff);
  for (int k = 0; k < 2000; ++k) {
    uint32_t bits = mant(rng) | (k % 2 ? 0x80000000u : 0u);
    s.push_back(bits_float(bits));
  }
  const float specials[] = {0.0f,    -0.0f,     kInf,       -kInf,      kNaN,     kDenormMin,
                            -kDenormMin, kFltMin, -kFltMin, kFltMax,   -kFltMax, 1.0f,
                            -1.0f,   1e-7f,     -1e-7f,     1e-20f,     -1e-20f,  1e-30f,
                            -1e-30f, 0.5f,      -0.5f,      88.72f,     88.73f,   -87.3f,
                            -103.9f, -104.0f,   9.5f,       -9.5f,      3.9f,     -3.9f,
                            0.625f,  -0.625f,   0.3466f,    -0.3466f,   2.0f,     -2.0f};
  for (float v : specials) s.push_back(v);
  while (s.size() % 16 != 0) s.push_back(0.5f);  // keeps vector-typed kernels happy
  return s;
}

struct ErrorStats {
  double max_ulp = 0;
  float worst_x = 0;
  size_t count = 0;
};

/// Compares kernel results against the double reference rounded to float.
ErrorStats measure(const MathFn& fn, const std::vector<float>& in, const std::vector<float>& out) {
  ErrorStats st;
  for (size_t k = 0; k < in.size(); ++k) {
    float want = static_cast<float>(fn.reference(static_cast<double>(in[k])));
    double d = ulp_distance(out[k], want);
    if (float_bits(out[k]) == kSentinelBits) d = std::numeric_limits<double>::infinity();
    if (d > st.max_ulp) {
      st.max_ulp = d;
      st.worst_x = in[k];
    }
    ++st.count;
  }
  return st;
}

// --- Accuracy ------------------------------------------------------------------------------

enum class Config { kScalarLoop, kVectorOperand, kScalarLoopNoFma };

const char* config_name(Config c) {
  switch (c) {
    case Config::kScalarLoop: return "scalar loop, host features";
    case Config::kVectorOperand: return "<8 x float> operand";
    case Config::kScalarLoopNoFma: return "scalar loop, host features -fma";
  }
  return "?";
}

class LlvmMathAccuracy : public ::testing::TestWithParam<std::tuple<std::string, Config>> {};

TEST_P(LlvmMathAccuracy, MaxUlpWithinBound) {
  const MathFn& fn = find_fn(std::get<0>(GetParam()));
  Config config = std::get<1>(GetParam());
  std::vector<std::string> extra;
  if (config == Config::kScalarLoopNoFma) {
    if (!host_is_x86()) GTEST_SKIP() << "-fma is an x86 feature name";
    extra.push_back("-fma");  // also clears AVX-512F, which implies FMA
  }
  JitKernel kernel(fn.emit, config == Config::kVectorOperand ? 8 : 1, host_target(extra));
  std::vector<float> in = make_samples(fn);
  std::vector<float> out = kernel.run(in);
  ErrorStats st = measure(fn, in, out);
  std::cout << "[llvm_math] " << fn.name << " (" << config_name(config)
            << "): max error " << st.max_ulp << " ulp over " << st.count << " inputs (worst x = "
            << std::hexfloat << st.worst_x << std::defaultfloat << " = " << st.worst_x << ")\n";
  EXPECT_LE(st.max_ulp, fn.max_ulp) << fn.name << " worst at x = " << st.worst_x;
}

std::vector<std::string> all_names() {
  std::vector<std::string> v;
  for (const auto& f : kFunctions) v.push_back(f.name);
  return v;
}

std::string accuracy_test_name(
    const ::testing::TestParamInfo<LlvmMathAccuracy::ParamType>& info) {
  static const char* const kConfigNames[] = {"ScalarLoop", "VectorOperand", "ScalarLoopNoFma"};
  return std::get<0>(info.param) + "_" + kConfigNames[static_cast<int>(std::get<1>(info.param))];
}

INSTANTIATE_TEST_SUITE_P(AllFunctions, LlvmMathAccuracy,
                         ::testing::Combine(::testing::ValuesIn(all_names()),
                                            ::testing::Values(Config::kScalarLoop,
                                                              Config::kVectorOperand,
                                                              Config::kScalarLoopNoFma)),
                         accuracy_test_name);

// --- Special values ------------------------------------------------------------------------

struct Special {
  float x;
  float want;  ///< compared bit-exactly (so the sign of zero matters); NaN means "any NaN"
};

void expect_specials(const char* name, const std::vector<Special>& cases) {
  const MathFn& fn = find_fn(name);
  JitKernel kernel(fn.emit, 1, host_target());
  std::vector<float> in;
  for (const auto& c : cases) in.push_back(c.x);
  std::vector<float> out = kernel.run(in);
  for (size_t k = 0; k < cases.size(); ++k) {
    const float want = cases[k].want;
    const float got = out[k];
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got) && float_bits(got) != kSentinelBits)
          << name << "(" << cases[k].x << ") = " << got << ", want nan";
    } else {
      EXPECT_EQ(float_bits(got), float_bits(want))
          << name << "(" << cases[k].x << ") = " << got << ", want " << want;
    }
  }
}

TEST(LlvmMathSpecials, Exp) {
  expect_specials("exp", {{-kInf, 0.0f},
                          {kInf, kInf},
                          {kNaN, kNaN},
                          {-kNaN, kNaN},
                          {0.0f, 1.0f},
                          {-0.0f, 1.0f},
                          {88.7f, std::exp(88.7f)},
                          {88.73f, kInf},
                          {100.0f, kInf},
                          {kFltMax, kInf},
                          {-104.0f, 0.0f},
                          {-200.0f, 0.0f},
                          {-kFltMax, 0.0f},
                          {-103.0f, static_cast<float>(std::exp(-103.0))},  // denormal
                          {-90.0f, static_cast<float>(std::exp(-90.0))}});
}

TEST(LlvmMathSpecials, Expm1) {
  expect_specials("expm1", {{-kInf, -1.0f},
                            {kInf, kInf},
                            {kNaN, kNaN},
                            {0.0f, 0.0f},
                            {-0.0f, -0.0f},
                            {-30.0f, -1.0f},
                            {-kFltMax, -1.0f},
                            {89.0f, kInf},
                            {kDenormMin, kDenormMin},
                            {-kDenormMin, -kDenormMin}});
}

TEST(LlvmMathSpecials, Log) {
  expect_specials("log", {{0.0f, -kInf},
                          {-0.0f, -kInf},
                          {-1.0f, kNaN},
                          {-kDenormMin, kNaN},
                          {-kInf, kNaN},
                          {kInf, kInf},
                          {kNaN, kNaN},
                          {1.0f, 0.0f},
                          {kDenormMin, static_cast<float>(std::log(double(kDenormMin)))},
                          {kFltMax, static_cast<float>(std::log(double(kFltMax)))}});
}

TEST(LlvmMathSpecials, Log1p) {
  expect_specials("log1p", {{-1.0f, -kInf},
                            {-1.5f, kNaN},
                            {-kInf, kNaN},
                            {kInf, kInf},
                            {kNaN, kNaN},
                            {0.0f, 0.0f},
                            {-0.0f, -0.0f},
                            {kDenormMin, kDenormMin},
                            {-kDenormMin, -kDenormMin},
                            {kFltMax, static_cast<float>(std::log1p(double(kFltMax)))}});
}

TEST(LlvmMathSpecials, Tanh) {
  expect_specials("tanh", {{kInf, 1.0f},
                           {-kInf, -1.0f},
                           {0.0f, 0.0f},
                           {-0.0f, -0.0f},
                           {kNaN, kNaN},
                           {20.0f, 1.0f},
                           {-20.0f, -1.0f},
                           {kDenormMin, kDenormMin},
                           {-kDenormMin, -kDenormMin}});
}

TEST(LlvmMathSpecials, Erf) {
  expect_specials("erf", {{kInf, 1.0f},
                          {-kInf, -1.0f},
                          {0.0f, 0.0f},
                          {-0.0f, -0.0f},
                          {kNaN, kNaN},
                          {5.0f, 1.0f},
                          {-5.0f, -1.0f}});
}

TEST(LlvmMathSpecials, Sigmoid) {
  expect_specials("sigmoid", {{-kInf, 0.0f},
                              {kInf, 1.0f},
                              {kNaN, kNaN},
                              {0.0f, 0.5f},
                              {-0.0f, 0.5f},
                              {100.0f, 1.0f},
                              {-200.0f, 0.0f},
                              {-kFltMax, 0.0f},
                              {kFltMax, 1.0f},
                              {-100.0f, static_cast<float>(std::exp(-100.0))}});  // denormal
}

/// expm1/log1p/tanh/erf must stay relatively accurate for tiny arguments, where a naive
/// exp(x) - 1 or log(1 + x) would return 0 or lose most digits.
TEST(LlvmMathSpecials, TinyArgumentsKeepRelativePrecision) {
  const float tiny[] = {1e-7f, -1e-7f, 3e-6f, -3e-6f, 1e-4f, -1e-4f, 1e-12f, -1e-12f, 1e-38f,
                        -1e-38f, 1e-40f, -1e-40f};
  for (const char* name : {"expm1", "log1p", "tanh", "erf"}) {
    const MathFn& fn = find_fn(name);
    JitKernel kernel(fn.emit, 1, host_target());
    for (float x : tiny) {
      float want = static_cast<float>(fn.reference(x));
      float got = kernel.run1(x);
      EXPECT_LE(ulp_distance(got, want), 1.0) << name << "(" << x << ") = " << got << ", want "
                                              << want;
    }
  }
}

/// A caller's fast-math flags (e.g. reassoc, which would fold the shifter and Cody-Waite
/// tricks away) must not leak into the emitted code, and must be restored afterwards.
TEST(LlvmMathSpecials, IgnoresCallerFastMathFlags) {
  struct Case {
    const char* name;
    Emitter fast_emit;
  };
  const Case cases[] = {
      {"exp",
       [](llvm::IRBuilder<>& b, llvm::Value* x) {
         b.setFastMathFlags(llvm::FastMathFlags::getFast());
         llvm::Value* r = emit_exp_f32(b, x);
         EXPECT_TRUE(b.getFastMathFlags().isFast());
         return r;
       }},
      {"log1p", [](llvm::IRBuilder<>& b, llvm::Value* x) {
         b.setFastMathFlags(llvm::FastMathFlags::getFast());
         llvm::Value* r = emit_log1p_f32(b, x);
         EXPECT_TRUE(b.getFastMathFlags().isFast());
         return r;
       }}};
  for (const auto& c : cases) {
    const MathFn& fn = find_fn(c.name);
    JitKernel kernel(c.fast_emit, 1, host_target());
    std::vector<float> in = make_samples(fn, 100000);
    ErrorStats st = measure(fn, in, kernel.run(in));
    EXPECT_LE(st.max_ulp, fn.max_ulp) << c.name << " with caller fast-math flags, worst x = "
                                      << st.worst_x;
  }
}

// --- Code shape ----------------------------------------------------------------------------

/// The loop vectorizer must widen the scalar exp loop (the whole point of branch-free code).
TEST(LlvmMathCodegen, ExpLoopIsVectorized) {
  JitKernel kernel(emit_exp_f32, 1, host_target());
  const std::string& ir = kernel.optimized_ir();
  std::smatch m;
  bool vectorized = std::regex_search(ir, m, std::regex("<(4|8|16) x float>"));
  EXPECT_TRUE(vectorized) << "no float vector type in optimized IR:\n" << ir;
  if (vectorized) std::cout << "[llvm_math] exp loop vectorized with " << m.str(0) << "\n";
}

/// No function in the optimized module may call anything but LLVM intrinsics (no libm).
TEST(LlvmMathCodegen, NoLibraryCalls) {
  for (const auto& fn : kFunctions) {
    JitKernel kernel(fn.emit, 1, host_target());
    const std::string& ir = kernel.optimized_ir();
    for (size_t pos = ir.find(" call "); pos != std::string::npos;
         pos = ir.find(" call ", pos + 1)) {
      size_t at = ir.find('@', pos);
      size_t eol = ir.find('\n', pos);
      ASSERT_TRUE(at != std::string::npos && at < eol) << "indirect call in " << fn.name;
      std::string callee = ir.substr(at + 1, ir.find('(', at) - at - 1);
      EXPECT_EQ(callee.rfind("llvm.", 0), 0u) << fn.name << " calls " << callee;
    }
    EXPECT_TRUE(std::regex_search(ir, std::regex("<(4|8|16) x float>")))
        << fn.name << " loop not vectorized";
  }
}

}  // namespace
}  // namespace kiln::cpu
