"""Runs kiln's generated CUDA kernels on the CPU, so machines without a GPU (CI) test what the
kernels compute, not only that NVRTC accepts them.

The kernel sources are compiled by the host C++ compiler against a small shim of the CUDA
built-ins they use: every CUDA thread of a block is a std::thread, `__syncthreads` and the warp
shuffles are barriers, `__shared__` is a static (blocks run one after another), and the grid is
cut to a few blocks (the kernels are grid-stride, so any grid must give the same result). Device
pointers are plain host pointers of CPU tensors. Half conversions (inline PTX on the GPU) use the
host compiler's _Float16 (the prelude's KILN_HOST_EMULATION branch).
Extern steps (ops kiln leaves to eager PyTorch) run through the CUDA runner's own ExternSteps,
on the CPU tensors.

    prog = emulate(fn, *cpu_args)   # -> outputs computed by the emulated kernels
"""

import ctypes
import math
import hashlib
import os
import subprocess
import tempfile

import torch

from kiln import _C, _cuda

SHIM = r"""
// ---- CPU emulation of the CUDA built-ins kiln's kernels use ------------------------------
#include <math.h>
#include <string.h>
#include <array>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>
#define __CUDACC_RTC__ 1
#define KILN_HOST_EMULATION 1  // the prelude's half conversions use the host's _Float16
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define asm(...) ((void)0)
struct dim3 { unsigned x = 0, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }

struct EmuBarrier {
  explicit EmuBarrier(int n) : n(n) {}
  void wait() {
    std::unique_lock<std::mutex> l(m);
    int gen = generation;
    if (++count == n) { count = 0; ++generation; cv.notify_all(); return; }
    cv.wait(l, [&] { return gen != generation; });
  }
  int n, count = 0, generation = 0;
  std::mutex m;
  std::condition_variable cv;
};
inline EmuBarrier* g_block_barrier = nullptr;
inline std::vector<EmuBarrier*> g_warp_barrier;
inline std::vector<std::array<unsigned long long, 32>> g_warp_slot;
inline void __syncthreads() { g_block_barrier->wait(); }
inline std::mutex g_atomic_mu;  // the emulation's atomics: one lock for every address
inline unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  unsigned int old = *p;
  if (old == cmp) *p = v;
  return old;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  unsigned long long old = *p;
  if (old == cmp) *p = v;
  return old;
}
template <class T> T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  T old = *p;
  *p = old + v;
  return old;
}
template <class T> T kiln_emu_shfl(T v, int from) {  // every lane of the warp calls it
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof(T));
  g_warp_slot[w][lane] = bits;
  g_warp_barrier[w]->wait();
  T out = v;
  if (from >= 0 && from < 32) memcpy(&out, &g_warp_slot[w][from], sizeof(T));
  g_warp_barrier[w]->wait();
  return out;
}
template <class T> T __shfl_up_sync(unsigned, T v, int o) { return kiln_emu_shfl(v, (threadIdx.x & 31) - o); }
template <class T> T __shfl_down_sync(unsigned, T v, int o) {
  const int from = (threadIdx.x & 31) + o;
  return kiln_emu_shfl(v, from < 32 ? from : -1);
}
"""

LAUNCHER = r"""
// ---- launcher --------------------------------------------------------------------------------
template <size_t... I> void kiln_emu_call(void* f, void** a, std::index_sequence<I...>) {
  using F = void (*)(decltype((void)I, (void*)nullptr)...);
  reinterpret_cast<F>(f)(a[I]...);
}
template <size_t N> void kiln_emu_call_n(void* f, void** a) { kiln_emu_call(f, a, std::make_index_sequence<N>()); }
using Caller = void (*)(void*, void**);
template <size_t... N> constexpr std::array<Caller, sizeof...(N)> kiln_emu_callers(std::index_sequence<N...>) {
  return {&kiln_emu_call_n<N>...};
}
extern "C" int kiln_emulate(void* fn, void** args, int nargs, long long grid, int block) {
  static constexpr auto callers = kiln_emu_callers(std::make_index_sequence<40>());
  if (nargs >= 40 || block % 32 != 0) return 1;
  blockDim.x = block;
  gridDim.x = (unsigned)grid;
  for (long long b = 0; b < grid; ++b) {
    EmuBarrier block_barrier(block);
    std::vector<std::unique_ptr<EmuBarrier>> warps;
    g_warp_barrier.clear();
    for (int w = 0; w < block / 32; ++w) {
      warps.push_back(std::make_unique<EmuBarrier>(32));
      g_warp_barrier.push_back(warps.back().get());
    }
    g_warp_slot.assign(block / 32, {});
    g_block_barrier = &block_barrier;
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t)
      threads.emplace_back([=] {
        threadIdx.x = t;
        blockIdx.x = (unsigned)b;
        callers[nargs](fn, args);
      });
    for (auto& th : threads) th.join();
  }
  return 0;
}
"""

_BUILD_DIR = os.path.join(tempfile.gettempdir(), "kiln-cuda-emulation")


def _compile(sources, names):
    """Builds the kernels into a shared library (cached by source hash); returns (lib, fns)."""
    table = "\n".join(f'extern "C" void* kiln_emu_fn_{i}() {{ return (void*)&{n}; }}' for i, n in enumerate(names))
    text = SHIM + "\n".join(sources) + LAUNCHER + table + "\n"
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    os.makedirs(_BUILD_DIR, exist_ok=True)
    so = os.path.join(_BUILD_DIR, f"k{key}.so")
    if not os.path.exists(so):
        src = os.path.join(_BUILD_DIR, f"k{key}.cpp")
        with open(src, "w") as f:
            f.write(text)
        tmp = so + f".{os.getpid()}.tmp"
        cmd = ["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-o", tmp, src]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"host compile of emulated kernels failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, so)
    lib = ctypes.CDLL(so)
    fns = []
    for i in range(len(names)):
        getter = getattr(lib, f"kiln_emu_fn_{i}")
        getter.restype = ctypes.c_void_p
        fns.append(getter())
    lib.kiln_emulate.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_longlong,
                                 ctypes.c_int]
    return lib, fns


def run_program(prog, leaves, fallbacks, max_grid=3):
    """Runs a compiled _C.CudaProgram in emulation on CPU tensors `leaves` (by leaf index);
    returns (its outputs, status_ok)."""
    kernels = prog.kernels()
    lib, fns = _compile([k["source"] for k in kernels], [k["name"] for k in kernels])
    bufs = prog.buffers()
    externs = _cuda.ExternSteps(prog.externs(), [_cuda._Buffer(b) for b in bufs], fallbacks)
    # The CUDA runner's allocation (temporaries carved from one block), on the CPU, every
    # output and temporary poisoned so that an element no kernel writes shows; an extern's
    # results are bound when it runs.
    layout = _cuda.BufferLayout([_cuda._Buffer(b) for b in bufs], externs.results)
    tensors = layout.allocate(leaves, "cpu", poison_outputs=True, poison_temps=True)
    status = torch.zeros(1, dtype=torch.int32)
    for kind, what in prog.steps():
        if kind == "gemm":  # cuBLAS's part: the product of the two strided operand views
            def view(buf, sizes, strides, offset):
                t = tensors[buf]
                return t.as_strided(sizes, strides, t.storage_offset() + offset)
            out = tensors[what["out"]]
            a, b = view(*what["a"]), view(*what["b"])  # each with its own batch dims, row-major
            flat = lambda t: t.reshape(math.prod(t.shape[:-2]), *t.shape[-2:])  # noqa: E731
            # cuBLASLt's half products accumulate in float32, add the bias, and round once
            wide = torch.float32 if out.dtype in (torch.float16, torch.bfloat16) else out.dtype
            prod = torch.matmul(flat(a).to(wide), flat(b).to(wide))
            if what["bias"] is not None:
                bias_buf, bias_offset = what["bias"]
                prod = prod + view(bias_buf, [b.shape[-1]], [1], bias_offset).to(wide)
            prod = prod.to(out.dtype)
            out.view(-1)[:prod.numel()].copy_(prod.reshape(-1)) if out.dim() == 1 else out.copy_(prod.reshape(out.shape))
            continue
        if kind == "extern":  # eager PyTorch's part (on CPU tensors here), shared with the runner
            assert externs.run(what, tensors) is not None, externs.failure
            continue
        assert kind == "kernel", kind
        k, f = kernels[what], fns[what]
        if k["grid"] == 0:
            continue
        ptrs = [tensors[i].data_ptr() for i in k["params"]] + [status.data_ptr()]
        arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
        rc = lib.kiln_emulate(f, arr, len(ptrs), min(k["grid"], max_grid), k["block"])
        assert rc == 0, f"emulating {k['name']} failed"
    outs = [tensors[i] if kind == "buffer" else leaves[i] for kind, i in prog.outputs()]
    return outs, int(status.item()) == 0


def emulate(fn, *args, max_grid=3, per_result=False, run_args=None):
    """Traces fn on CPU tensors, generates its CUDA program and runs it in emulation. Returns
    (outputs as a flat list, status_ok): the graph's outputs, or with per_result one entry per
    tensor leaf of fn's result, in its order. `run_args` (same shapes and dtypes as args) runs
    the program on other values than it was traced on (one eager would reject, say)."""
    tracer = _cuda.trace_graph(fn, args, {})
    if run_args is not None:
        swap = {id(a): b for a, b in zip(args, run_args)}
        tracer.leaves = [swap.get(id(t), t) for t in tracer.leaves]
    prog = _C.CudaProgram(tracer.builder, 0, 90)
    outs, ok = run_program(prog, tracer.leaves, tracer.fallbacks, max_grid=max_grid)
    if per_result:  # the graph's outputs in the order fn returned them (arguments, repeats)
        needed = list(tracer.segments[0].needed)
        outs = [outs[needed.index(spec[2])] if spec[0] == "seg" else
                tracer.leaves[spec[1]] if spec[0] == "input" else spec[1] for spec in tracer.result_specs]
    return outs, ok


def emulate_training(fn, *args, seed=0, max_grid=3):
    """A training step of fn for the CUDA target, in emulation: traces fn on CPU tensors (the
    floating ones that require grad are its inputs with gradients) as a CUDA capture records
    it, records autograd's backward (Note [Training capture]), partitions and compiles both
    programs (_C.cuda_training), runs the forward, then the backward on the saved values and
    seeded random output gradients. Returns (forward outputs in the order fn returned them,
    {leaf index: gradient}, the output gradients used, the _C.CudaTraining)."""
    from kiln._backward_capture import capture_joint
    from kiln._compile import _captured_candidates
    from kiln._flatten import flatten
    from kiln._trace import trace
    leaves = []
    flatten((args, {}), leaves)
    result, tracer = trace(fn, args, {}, list(leaves), _captured_candidates(fn, None), target="cuda")
    assert tracer.failure is None, tracer.failure
    assert len(tracer.segments) == 1
    res_leaves = []
    flatten(result, res_leaves)
    specs = tracer.outputs(res_leaves, len(leaves))
    seg = tracer.segments[0]
    tensor_of = {s[2]: t for t, s in zip(res_leaves, specs) if s[0] == "seg"}
    joint = capture_joint(tracer, seg, tensor_of, len(tracer.leaves))
    assert joint is not None and not isinstance(joint, Exception), joint
    seg.builder.set_outputs(list(seg.needed) + joint["grad_vids"])
    tp = _C.cuda_training(seg.builder, len(seg.needed), joint["tangents"], joint["backward_start"], arch=90)
    fwd, ok = run_program(tp.forward, tracer.leaves, tracer.fallbacks, max_grid=max_grid)
    assert ok, "the emulated forward flagged an error"
    g = torch.Generator().manual_seed(seed)
    tangents = [torch.randn(joint["output_meta"][p][0], generator=g).to(joint["output_meta"][p][1])
                for p in joint["differentiable"]]
    saved = [fwd[p] for p in tp.saved_positions] + [tracer.leaves[i] for i in tp.saved_inputs]
    bwd, ok = run_program(tp.backward, saved + tangents, tracer.fallbacks, max_grid=max_grid)
    assert ok, "the emulated backward flagged an error"
    grads = {leaf: bwd[tp.gradient_positions[j]] for leaf, j in joint["grad_leaves"]}
    outs = [fwd[seg.needed.index(s[2])] if s[0] == "seg" else tracer.leaves[s[1]] for s in specs]
    cotangents = {seg.needed[p]: t for p, t in zip(joint["differentiable"], tangents)}
    out_grads = [cotangents.get(s[2]) if s[0] == "seg" else None for s in specs]
    return outs, grads, out_grads, tp
