/// \file llvm_jit.cpp
/// All of kiln's ORC use: one LLJIT for the process, a JITDylib per module, object files kept in
/// the disk cache (support/disk_cache.h) between processes, the LLVM 16
/// new-pass-manager O3 pipeline with libmvec's float32 functions as vector math, and assembly printing.
#include "codegen_cpu/llvm_jit.h"

#include <dlfcn.h>
#include <llvm/Analysis/TargetLibraryInfo.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/Config/llvm-config.h>
#include <llvm/ExecutionEngine/Orc/ThreadSafeModule.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/IRReader/IRReader.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/ErrorHandling.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/SourceMgr.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>
#include <llvm/TargetParser/Host.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#include "support/disk_cache.h"
#include "support/error.h"

namespace kiln::cpu {
namespace {

std::string to_string(llvm::Error e) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << e;
  return os.str();
}

template <typename T>
T unwrap(llvm::Expected<T> v, const char* what) {
  if (!v) throw InternalError(std::string("kiln: LLVM ") + what + ": " + to_string(v.takeError()));
  return std::move(*v);
}

struct Jit {
  std::unique_ptr<llvm::orc::LLJIT> lljit;
  llvm::orc::JITTargetMachineBuilder jtmb;
  HostTarget host;
  std::mutex opt_mutex;  // the shared TargetMachine is not safe for concurrent codegen
  std::unique_ptr<llvm::TargetMachine> tm;
};

Jit& jit() {
  // Created once and deliberately never destroyed: kernels may run until the process exits,
  // and LLVM's own static destructors would race a JIT torn down at exit.
  static Jit* j = [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    llvm::InitializeNativeTargetAsmParser();
    // Vector math (float32 sin, cos, pow) resolves to glibc's libmvec.
    dlopen("libmvec.so.1", RTLD_NOW | RTLD_GLOBAL);
    auto jtmb = unwrap(llvm::orc::JITTargetMachineBuilder::detectHost(), "detecting the host");
    // LLVM 16 may not know the CPU by name ("generic"); the feature string carries AVX2/AVX-512.
    llvm::SubtargetFeatures features;
    llvm::StringMap<bool> host_features;
    if (llvm::sys::getHostCPUFeatures(host_features))
      for (auto& f : host_features) features.AddFeature(f.first(), f.second);
    jtmb.getFeatures() = features;
    jtmb.setCodeGenOptLevel(llvm::CodeGenOpt::Aggressive);
    auto* out = new Jit{nullptr, jtmb, {}, {}, nullptr};
    out->lljit = unwrap(llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(jtmb).create(), "creating LLJIT");
    auto& dl = out->lljit->getDataLayout();
    out->lljit->getMainJITDylib().addGenerator(unwrap(
        llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(dl.getGlobalPrefix()), "process symbols"));
    out->tm = unwrap(jtmb.createTargetMachine(), "creating the target machine");
    out->host.triple = jtmb.getTargetTriple().str();
    out->host.cpu = jtmb.getCPU();
    out->host.features = features.getString();
    bool avx512 = host_features.lookup("avx512f"), avx2 = host_features.lookup("avx2");
    out->host.vector_bits = avx512 ? 512 : avx2 ? 256 : 128;
    return out;
  }();
  return *j;
}

void optimize(llvm::Module& m, llvm::TargetMachine* tm, int level) {
  llvm::LoopAnalysisManager lam;
  llvm::FunctionAnalysisManager fam;
  llvm::CGSCCAnalysisManager cgam;
  llvm::ModuleAnalysisManager mam;
  llvm::PipelineTuningOptions pto;
  pto.LoopVectorization = level >= 2;
  pto.SLPVectorization = level >= 2;
  llvm::PassBuilder pb(tm, pto);
  llvm::Triple triple(m.getTargetTriple());
  llvm::TargetLibraryInfoImpl tlii(triple);
  // Only libmvec's float32 functions (sin, cos, pow; kiln emits exp, log and the rest itself):
  // its float64 ones are up to 4 ulp off and differ from scalar libm, and LLVM picks a vector
  // width per loop, so one value computed in two loops of a kernel came out apart. Softmax over
  // exp(x) in float64 then saw x - max(x) = 1 ulp instead of 0 (a fuzzer finding). float64
  // math calls scalar libm: at most 1 ulp and the same in every loop.
  static const llvm::VecDesc kFloat32Libmvec[] = {
      {"sinf", "_ZGVbN4v_sinf", llvm::ElementCount::getFixed(4)},
      {"sinf", "_ZGVdN8v_sinf", llvm::ElementCount::getFixed(8)},
      {"llvm.sin.f32", "_ZGVbN4v_sinf", llvm::ElementCount::getFixed(4)},
      {"llvm.sin.f32", "_ZGVdN8v_sinf", llvm::ElementCount::getFixed(8)},
      {"cosf", "_ZGVbN4v_cosf", llvm::ElementCount::getFixed(4)},
      {"cosf", "_ZGVdN8v_cosf", llvm::ElementCount::getFixed(8)},
      {"llvm.cos.f32", "_ZGVbN4v_cosf", llvm::ElementCount::getFixed(4)},
      {"llvm.cos.f32", "_ZGVdN8v_cosf", llvm::ElementCount::getFixed(8)},
      {"powf", "_ZGVbN4vv_powf", llvm::ElementCount::getFixed(4)},
      {"powf", "_ZGVdN8vv_powf", llvm::ElementCount::getFixed(8)},
      {"llvm.pow.f32", "_ZGVbN4vv_powf", llvm::ElementCount::getFixed(4)},
      {"llvm.pow.f32", "_ZGVdN8vv_powf", llvm::ElementCount::getFixed(8)},
  };
  tlii.addVectorizableFunctions(kFloat32Libmvec);
  // Registered before the defaults so this TargetLibraryInfo (with libmvec) is the one used.
  fam.registerPass([&] { return llvm::TargetLibraryAnalysis(tlii); });
  pb.registerModuleAnalyses(mam);
  pb.registerCGSCCAnalyses(cgam);
  pb.registerFunctionAnalyses(fam);
  pb.registerLoopAnalyses(lam);
  pb.crossRegisterProxies(lam, fam, cgam, mam);
  llvm::OptimizationLevel ol = level <= 0   ? llvm::OptimizationLevel::O0
                               : level == 1 ? llvm::OptimizationLevel::O1
                               : level == 2 ? llvm::OptimizationLevel::O2
                                            : llvm::OptimizationLevel::O3;
  llvm::ModulePassManager mpm =
      level <= 0 ? pb.buildO0DefaultPipeline(ol) : pb.buildPerModuleDefaultPipeline(ol);
  mpm.run(m, mam);
}

/// One module's machine code, in a JITDylib of its own: modules reuse symbol names (they are
/// named by the program alone, so that the disk cache finds them in another process).
class JitModuleImpl : public JitModule {
 public:
  explicit JitModuleImpl(llvm::orc::JITDylib& jd) : jd_(jd) {}
  ~JitModuleImpl() override {
    if (auto err = jit().lljit->getExecutionSession().removeJITDylib(jd_)) llvm::consumeError(std::move(err));
  }
  void* lookup(const std::string& name) override {
    auto addr = unwrap(jit().lljit->lookup(jd_, name), "symbol lookup");
    return addr.toPtr<void*>();
  }

 private:
  llvm::orc::JITDylib& jd_;
};

std::unique_ptr<JitModule> load_object(Jit& j, const llvm::SmallVectorImpl<char>& obj) {
  static std::atomic<uint64_t> serial{0};
  std::string name = "kiln_module_" + std::to_string(serial++);
  auto jd = j.lljit->createJITDylib(name);
  if (!jd) throw InternalError("kiln: LLVM creating a JITDylib: " + to_string(jd.takeError()));
  jd->addToLinkOrder(j.lljit->getMainJITDylib());  // libm, libmvec and the process's symbols
  auto buf = llvm::MemoryBuffer::getMemBufferCopy(llvm::StringRef(obj.data(), obj.size()), name);
  if (auto err = j.lljit->addObjectFile(*jd, std::move(buf)))
    throw InternalError("kiln: LLVM rejected a module: " + to_string(std::move(err)));
  return std::make_unique<JitModuleImpl>(*jd);
}

// ---- the disk cache of object files (Note [Disk cache] in support/disk_cache.h) ----------

/// Everything that decides the object code: the unoptimised IR, the optimisation level, the
/// target, LLVM's version and this file's build (its pipeline: O3 with libmvec).
std::string cache_key(const llvm::Module& m, int opt_level, const HostTarget& host) {
  std::string key = "kiln cpu object\nllvm " LLVM_VERSION_STRING "\nbuild " __DATE__ " " __TIME__ "\n";
  key += host.triple + "\n" + host.cpu + "\n" + host.features + "\nO" + std::to_string(opt_level) + "\n";
  llvm::raw_string_ostream os(key);
  m.print(os, nullptr);
  return os.str();
}

/// object | module IR | (function name, IR)...
std::string encode_entry(const llvm::SmallVectorImpl<char>& obj, const ModuleText& text) {
  std::string out;
  append_field(out, std::string(obj.data(), obj.size()));
  append_field(out, text.module_ir);
  for (const auto& [name, ir] : text.function_ir) {
    append_field(out, name);
    append_field(out, ir);
  }
  return out;
}

bool decode_entry(const std::string& in, llvm::SmallVectorImpl<char>* obj, ModuleText* text) {
  size_t pos = 0;
  std::string o;
  ModuleText t;
  if (!read_field(in, pos, &o) || !read_field(in, pos, &t.module_ir)) return false;
  while (pos < in.size()) {
    std::string name, ir;
    if (!read_field(in, pos, &name) || !read_field(in, pos, &ir)) return false;
    t.function_ir.emplace_back(std::move(name), std::move(ir));
  }
  obj->assign(o.begin(), o.end());
  if (text) *text = std::move(t);
  return true;
}

}  // namespace

const HostTarget& host_target() { return jit().host; }

std::unique_ptr<JitModule> jit_add_module(std::unique_ptr<llvm::LLVMContext> ctx, std::unique_ptr<llvm::Module> m,
                                          int opt_level, ModuleText* text, JitTimes* times) {
  JitTimes local;
  JitTimes& t = times ? *times : local;
  auto clock = std::chrono::steady_clock::now();
  auto lap = [&clock] {
    auto now = std::chrono::steady_clock::now();
    double ms = std::chrono::duration<double, std::milli>(now - clock).count();
    clock = now;
    return ms;
  };
  Jit& j = jit();
  m->setDataLayout(j.lljit->getDataLayout());
  m->setTargetTriple(j.host.triple);
  const DiskCache cache("cpu");
  t.disk_enabled = cache.enabled();
  std::string key;
  if (cache.enabled()) {
    key = cache_key(*m, opt_level, j.host);
    if (auto hit = cache.get(key)) {
      llvm::SmallVector<char, 0> obj;
      if (decode_entry(*hit, &obj, text)) {
        m.reset();
        ctx.reset();
        t.disk_hit = true;
        t.cache_ms += lap();
        auto module = load_object(j, obj);
        t.load_ms = lap();
        return module;
      }
    }
  }
  t.cache_ms += lap();
  {
    std::lock_guard<std::mutex> lock(j.opt_mutex);
    optimize(*m, j.tm.get(), opt_level);
  }
  t.optimize_ms = lap();
  if (text) {
    llvm::raw_string_ostream os(text->module_ir);
    m->print(os, nullptr);
    for (llvm::Function& f : *m) {
      if (f.isDeclaration()) continue;
      std::string s;
      llvm::raw_string_ostream fs(s);
      f.print(fs);
      text->function_ir.emplace_back(f.getName().str(), fs.str());
    }
  }
  // Machine code is emitted here rather than inside ORC's lookup, under a handler that turns
  // LLVM's fatal errors (an instruction selector that "Cannot select" a vector pattern; seen
  // with LLVM 16 on an AVX-512 mask broadcast) into an InternalError: the function then runs
  // eagerly with the reason, instead of LLVM ending the process. Inside ORC the error would
  // unwind through its locks; here only this module's half-built state is lost (leaked).
  llvm::SmallVector<char, 0> obj;
  {
    // If LLVM fails below, the module and its context are leaked, not destroyed: the failed
    // code generator may still point into them.
    struct LeakOnFailure {
      std::unique_ptr<llvm::LLVMContext>& ctx;
      std::unique_ptr<llvm::Module>& m;
      bool ok = false;
      ~LeakOnFailure() {
        if (ok) return;
        (void)m.release();
        (void)ctx.release();
      }
    } leak{ctx, m};
    std::lock_guard<std::mutex> lock(j.opt_mutex);
    llvm::install_fatal_error_handler(
        [](void*, const char* reason, bool) {
          llvm::remove_fatal_error_handler();
          // The first line names the failure; the rest is a DAG dump nobody can act on.
          std::string r(reason);
          size_t fn = r.find("In function:");
          std::string where = fn == std::string::npos ? "" : " (" + r.substr(fn) + ")";
          throw InternalError("kiln: LLVM failed to generate machine code: " + r.substr(0, r.find('\n')) + where);
        },
        nullptr);
    struct Uninstall {
      ~Uninstall() { llvm::remove_fatal_error_handler(); }
    } uninstall;
    auto* pm = new llvm::legacy::PassManager();  // leaked if LLVM fails half-way (see above)
    llvm::raw_svector_ostream os(obj);
    if (j.tm->addPassesToEmitFile(*pm, os, nullptr, llvm::CGFT_ObjectFile))
      throw InternalError("kiln: this target cannot emit object code");
    pm->run(*m);
    delete pm;
    leak.ok = true;
  }
  // The IR is no longer needed once the object exists; the module must go before its context.
  m.reset();
  ctx.reset();
  t.machine_code_ms = lap();
  auto module = load_object(j, obj);
  t.load_ms = lap();
  if (cache.enabled()) cache.put(key, encode_entry(obj, text ? *text : ModuleText{}));
  t.cache_ms += lap();
  return module;
}

std::string ir_to_asm(const std::string& ir_text) {
  Jit& j = jit();
  llvm::LLVMContext ctx;
  llvm::SMDiagnostic diag;
  auto m = llvm::parseIR(llvm::MemoryBufferRef(ir_text, "kernel"), diag, ctx);
  if (!m) return "; could not parse the kernel's IR: " + diag.getMessage().str();
  auto tm = unwrap(j.jtmb.createTargetMachine(), "creating a target machine");
  m->setDataLayout(tm->createDataLayout());
  llvm::SmallString<4096> out;
  llvm::raw_svector_ostream os(out);
  llvm::legacy::PassManager pm;
  if (tm->addPassesToEmitFile(pm, os, nullptr, llvm::CGFT_AssemblyFile))
    return "; this target cannot print assembly";
  pm.run(*m);
  return std::string(out.str());
}

}  // namespace kiln::cpu
