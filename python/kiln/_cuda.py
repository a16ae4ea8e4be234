"""The CUDA backend's Python side: finding NVRTC, kiln.codegen(..., target="cuda"), and running
compiled programs on CUDA tensors.

    kernels = kiln.codegen(fn, *example_args, target="cuda")   # no GPU needed (NVRTC -> PTX)
    kernels[0].source   # CUDA C++ of the first kernel;  kernels[0].asm: its PTX

Run path (wired into _compile.py for captures whose tensors live on a CUDA device):

    entry = compile_cuda_entry(tracer)        # kernels compiled and loaded for the device
                                               # (or compile_cuda_entry(builder, device))
    outs = entry(full_leaves)                  # list of outputs, or False (see below)
    native = CudaEntry(guards, entry)          # same protocol as _C.Entry: (full, grad) ->
                                               #   None on a guard miss, False, or the outputs

`full_leaves` is the call's leaf list as _C.Entry receives it (arguments, captured tensors,
guarded values). Outputs and temporaries are allocated with PyTorch's allocator on the device
(torch.empty_strided), and the kernels are launched on PyTorch's current stream. A result of
False means a kernel met an integer division by zero: the call must be rerun eagerly, which
raises PyTorch's own error (the same protocol as the CPU backend).

NVRTC is opened at first use from, in order: $KILN_NVRTC, the nvidia-cuda-nvrtc wheel found on
sys.path (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib), the loader's search, /usr/local/cuda/lib64.
"""

import glob
import os
import site
import sys

import torch

from . import _C
from ._flatten import flatten
from ._trace import NAME_DTYPES, trace

__all__ = ["HAVE_CUDA_BACKEND", "cuda_status", "codegen_cuda", "compile_cuda_entry", "CudaEntry", "CudaKernel",
           "CudaRunner", "ExternSteps", "is_cuda_trace", "nvrtc_search_paths", "trace_graph"]

#: kiln._C was built with the CUDA backend (KILN_CUDA) and registers it.
HAVE_CUDA_BACKEND = hasattr(_C, "cuda_codegen")
_NO_BACKEND = "kiln._C has no CUDA backend (built with KILN_CUDA=OFF, or define_cuda is not registered)"

# Folders of the PyPI wheels that ship libnvrtc (CUDA 13 first, then CUDA 12's layout).
_WHEEL_LIB_DIRS = ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib")


def nvrtc_search_paths():
    """libnvrtc files of the nvidia-cuda-nvrtc wheel, wherever sys.path and site-packages reach."""
    roots = list(sys.path)
    try:
        roots += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenvs' site module lacks them
        pass
    found = []
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        for sub in _WHEEL_LIB_DIRS:
            # libnvrtc.so.13 / libnvrtc.so.12 (the builtins and .alt variants are not the library)
            for path in sorted(glob.glob(os.path.join(root, sub, "libnvrtc.so*"))):
                name = os.path.basename(path)
                if name.startswith("libnvrtc.so") and path not in found:
                    found.append(path)
    return found


if HAVE_CUDA_BACKEND:
    _C.set_nvrtc_search_paths(nvrtc_search_paths())


def cuda_status():
    """What kiln can do with CUDA here: {'backend', 'nvrtc', 'nvrtc_path', 'nvrtc_version',
    'driver', 'reason'} (reason says why what is False is False)."""
    if not HAVE_CUDA_BACKEND:
        return {"backend": False, "nvrtc": False, "nvrtc_path": "", "nvrtc_version": 0, "driver": False,
                "reason": _NO_BACKEND}
    info = _C.nvrtc_info()
    driver = _C.cuda_available()
    reasons = []
    if not info["available"]:
        reasons.append(info["why"])
    if not driver:
        reasons.append(_C.cuda_unavailable_reason())
    return {"backend": True, "nvrtc": info["available"], "nvrtc_path": info["path"],
            "nvrtc_version": info["version"], "driver": driver, "reason": "; ".join(reasons)}


def _require_backend():
    if not HAVE_CUDA_BACKEND:
        raise _C.Unsupported(_NO_BACKEND)


def _default_arch(device=None):
    """Compute capability to compile for: the GPU's when there is one, else 90 (sm_90)."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return major * 10 + minor
    return 90


class CudaKernel:
    """One generated CUDA kernel: .name, .target ('cuda'), .source (CUDA C++), .asm / .ptx (PTX),
    .loop_ir, .block / .grid / .row / .columns (launch shape; columns > 0: a column kernel),
    .time_ns (0: not profiled)."""

    def __init__(self, info):
        self.name = info["name"]
        self.symbol = info["symbol"]
        self.target = "cuda"
        self.source = info["source"]
        self.ptx = info["ptx"]
        self.asm = info["ptx"]
        self.loop_ir = info["loop_ir"]
        self.block = info["block"]
        self.grid = info["grid"]
        self.row = info["row"]
        self.columns = info.get("columns", 0)
        self.may_fail = info["may_fail"]
        self.compile_ms = info["compile_ms"]
        self.time_ns = info.get("time_ns", 0)

    def __repr__(self):
        return f"<kiln.Kernel {self.name} (cuda)>"


def trace_graph(fn, args, kwargs=None):
    """Traces fn(*args, **kwargs) once (the ops run for real) into one graph with its outputs
    set; returns the tracer. Raises kiln.Unsupported when the trace fails or has a graph break."""
    kwargs = kwargs or {}
    from ._compile import _captured_candidates
    module = fn if isinstance(fn, torch.nn.Module) else None
    leaves = []
    flatten((args, kwargs), leaves)
    arg_count = len(leaves)
    candidates = _captured_candidates(fn.forward if module is not None else fn, module)
    result, tracer = trace(fn, args, kwargs, list(leaves), candidates, target="cuda")
    if tracer.failure is not None:
        f = tracer.failure
        raise _C.Unsupported(f"kiln.codegen: the function cannot be captured: {f.reason} (at {f.location})")
    res_leaves = []
    flatten(result, res_leaves)
    tracer.result_specs = tracer.outputs(res_leaves, arg_count)  # per result leaf: its source
    segments = getattr(tracer, "segments", None)
    if segments is not None:  # a trace split by graph breaks: one graph per segment
        if len(segments) > 1:
            raise _C.Unsupported("kiln.codegen: the function reads a tensor's value into Python (a graph break); "
                                 "codegen compiles straight-line functions only")
        segments[0].builder.set_outputs(list(segments[0].needed))
    return tracer


def codegen_cuda(fn, *example_args, arch=None, **example_kwargs):
    """Traces `fn` on the example arguments (CPU, meta or CUDA tensors: the ops run for real once)
    and compiles every kernel of its program to PTX with NVRTC for compute capability `arch`
    (default: the GPU's, else 90). Needs no GPU. Returns a list of CudaKernel; raises
    kiln.Unsupported when the function cannot be captured or NVRTC is missing."""
    _require_backend()
    tracer = trace_graph(fn, example_args, example_kwargs)
    infos = _C.cuda_codegen(tracer.builder, int(arch or _default_arch()))
    return [CudaKernel(info) for info in infos]


class _Buffer:
    __slots__ = ("kind", "index", "dtype", "sizes", "strides", "numel")

    def __init__(self, d):
        self.kind = d["kind"]
        self.index = d["index"]
        self.dtype = NAME_DTYPES[d["dtype"]]
        self.sizes = tuple(d["sizes"])
        self.strides = tuple(d["strides"])
        self.numel = d["storage_numel"]


_ALIGN = 256  # bytes: every temporary starts where a 16-byte vector access or cuBLAS wants it


class BufferLayout:
    """Where a program's buffers live on each call, laid out once per program: the arguments
    for inputs, a fresh strided tensor for each output (the call returns it), and every
    temporary carved out of one allocation, each 256-byte aligned: one allocator call per call
    instead of one per temporary (the views keep it alive; PyTorch frees it, stream-ordered,
    after the call). Buffers in `skip` get None. The CUDA runner and the CPU emulation of CUDA
    programs (tests) both use it."""

    def __init__(self, bufs, skip=frozenset()):
        self.bufs = bufs
        self.slots = []  # per buffer: None (skipped), "input", "output", or a temporary's (offset, bytes)
        self.total = 0
        for i, b in enumerate(bufs):
            if i in skip:
                self.slots.append(None)
            elif b.kind in ("input", "output"):
                self.slots.append(b.kind)
            else:
                n = b.numel * b.dtype.itemsize
                self.slots.append((self.total, n))
                self.total += -(-n // _ALIGN) * _ALIGN

    def allocate(self, leaves, device, poison_outputs=False, poison_temps=False):
        arena = torch.empty(self.total, dtype=torch.uint8, device=device) if self.total else None
        out = []
        for b, slot in zip(self.bufs, self.slots):
            if slot is None:
                t = None
            elif slot == "input":
                t = leaves[b.index]
            elif slot == "output":
                t = torch.empty_strided(b.sizes, b.strides, dtype=b.dtype, device=device)
                if poison_outputs:
                    _poison(t)
            else:  # a temporary: flat storage
                offset, n = slot
                t = arena[offset:offset + n].view(b.dtype) if n else torch.empty(0, dtype=b.dtype, device=device)
                if poison_temps:
                    _poison(t)
            out.append(t)
        return out


class ExternSteps:
    """Runs a program's extern steps: the ops kiln leaves to eager PyTorch (a convolution, topk)
    called on the buffers' tensors between kiln's launches. The CUDA runner and the CPU
    emulation of CUDA programs (tests) both use it.

    `run(i, tensors)`: calls extern i's fallback on its operands (a strided view of a buffer
    where the program says so), binds its results into `tensors` (by buffer id) and returns
    them; None when the op raised or returned another shape or dtype than at capture (a
    data-dependent result), with the reason in `failure`."""

    def __init__(self, externs, buffers, fallbacks):
        self.externs = externs
        self.buffers = buffers
        self.fallbacks = fallbacks
        self.failure = ""
        self.data_dependent = False
        #: buffers that an extern's results become (not allocated up front)
        self.results = {b for e in externs for b in e["outputs"]}

    def run(self, i, tensors):
        e = self.externs[i]
        fb = self.fallbacks[e["table_index"]]
        args = []
        for b, view in zip(e["inputs"], e["views"]):
            t = tensors[b]
            if view is None:  # the buffer as the program lays it out (a temporary is flat storage)
                want = self.buffers[b]
                view = None if tuple(t.shape) == want.sizes and t.stride() == want.strides else \
                    (want.sizes, want.strides, 0)
            args.append(t if view is None else t.as_strided(view[0], view[1], t.storage_offset() + view[2]))
        try:
            got = fb(*args)
        except Exception as err:  # eager redoes the call and raises it there
            self.failure = f"fallback op {fb} raised ({str(err)[:200]}): eager redoes the call"
            return None
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        if len(got) < len(e["outputs"]):
            self.failure = f"fallback op {fb} returned {len(got)} results, {len(e['outputs'])} at capture"
            return None
        out = []
        for b, t in zip(e["outputs"], got):
            want = self.buffers[b]
            if t.dtype != want.dtype or tuple(t.shape) != want.sizes:
                self.failure = (f"fallback op {fb} returned another shape or dtype than its {want.dtype} "
                                f"{list(want.sizes)} at capture (a data-dependent result): the call runs eagerly")
                self.data_dependent = True
                return None
            if t.stride() != want.strides:
                fixed = torch.empty_strided(want.sizes, want.strides, dtype=want.dtype, device=t.device)
                fixed.copy_(t)
                t = fixed
            tensors[b] = t
            out.append(t)
        return out


class CudaRunner:
    """A compiled program bound to one CUDA device: `runner(full_leaves)` allocates outputs and
    temporaries with PyTorch's allocator, launches every kernel on the current stream (and the
    eager ops kiln does not compile, on the same stream, between them) and returns the outputs
    (False when a kernel flagged an integer division by zero or an eager op failed).

    It also answers what kiln.kernels and the debug paths ask a CPU Program: kernels(),
    kernel_asm(symbol), loop_ir, fusion_log, timings, dump_error, compile_ms, calls."""

    target = "cuda"

    def __init__(self, builder, device, debug_dir="", fallbacks=(), program=None, graph=""):
        """`builder`: the captured graph to compile; or None with `program`, a _C.CudaProgram
        compiled already (a training step's forward or backward), and `graph`, its text."""
        self.device = torch.device("cuda", device)
        self._index = device
        self._prog = program if program is not None else _C.CudaProgram(builder, device, 0, debug_dir)
        self._prog.load(device)  # a module that does not load fails here, at capture time
        self._bufs = [_Buffer(b) for b in self._prog.buffers()]
        self._outputs = self._prog.outputs()
        externs = self._prog.externs()
        self._externs = ExternSteps(externs, self._bufs, list(fallbacks)) if externs else None
        # Buffers some step touches; the others (a temporary whose stores were dropped) are never
        # allocated, and neither are an extern's results (the tensor it returns becomes the buffer).
        touched = {idx for kind, idx in self._outputs if kind == "buffer"}
        for k in self._prog.kernels():
            touched.update(k["params"])
        for kind, what in self._prog.steps():
            if kind == "gemm":
                touched.update((what["a"][0], what["b"][0], what["out"]))
                if what["bias"] is not None:
                    touched.add(what["bias"][0])
        for e in externs:
            touched.update(e["inputs"])
        unallocated = {i for i in range(len(self._bufs)) if i not in touched}
        if self._externs is not None:
            unallocated |= self._externs.results
        self._layout = BufferLayout(self._bufs, unallocated)
        self._inputs = [b for b, slot in zip(self._bufs, self._layout.slots) if slot == "input"]
        self._may_fail = self._prog.may_fail
        self.poison_outputs = False  # tests: fill outputs with garbage first, so unwritten elements show
        self.graph = builder.print() if builder is not None else graph
        self.dump_error = ""
        self.timings = [f"cuda (emit + nvrtc, {len(self._prog.kernels())} kernels): {self._prog.compile_ms:.3f} ms"]

    def __call__(self, leaves):
        dev = self.device
        ext = self._externs
        for b in self._inputs:
            if leaves[b.index].device != dev:
                raise _C.Unsupported(f"kiln: input {b.index} is on {leaves[b.index].device}, the program on {dev}")
        # Buffers nothing uses, and extern results (bound when the extern runs), get no memory.
        keep = self._layout.allocate(leaves, dev, poison_outputs=self.poison_outputs)
        ptrs = [0 if t is None else t.data_ptr() for t in keep]
        status = None
        if self._may_fail:
            status = torch.empty(1, dtype=torch.int32, device=dev)
        ptrs.append(0 if status is None else status.data_ptr())
        stream = torch.cuda.current_stream(dev).cuda_stream
        if ext is None:
            ok = self._prog.run(ptrs, stream, self._index)
        else:
            ext.failure, ext.data_dependent = "", False

            def on_extern(j):
                got = ext.run(j, keep)
                return False if got is None else [t.data_ptr() for t in got]

            ok = self._prog.run(ptrs, stream, self._index, on_extern)
        if not ok:
            return False
        return [keep[idx] if kind == "buffer" else leaves[idx] for kind, idx in self._outputs]

    def run(self, leaves, consumable=()):
        """The protocol a training step's runner uses (_autograd.TrainingRunner); `consumable`
        (leaves the CPU runner may drop early) is not used here."""
        return self(leaves)

    def last_failure(self):
        """Why the last call returned False, when an eager op inside it failed or cuBLASLt had
        no algorithm (else "")."""
        if self._externs is not None and self._externs.failure:
            return self._externs.failure
        return self._prog.last_failure

    def failed_on_data_dependent_shape(self):
        """Whether the last call returned False because an eager op's result had another shape."""
        return self._externs is not None and self._externs.data_dependent

    # -- what kiln.kernels / _compile.py read from a Program ----------------------------------
    def kernels(self):
        out = []
        for info in self._prog.kernels():
            info = dict(info)
            info["time_ns"] = 0
            out.append(info)
        return out

    def kernel_asm(self, symbol):
        for info in self._prog.kernels():
            if info["symbol"] == symbol:
                return info["ptx"]
        return ""

    @property
    def loop_ir(self):
        return self._prog.loop_ir

    @property
    def fusion_log(self):
        return self._prog.fusion_log

    @property
    def compile_ms(self):
        return self._prog.compile_ms

    @property
    def calls(self):
        return self._prog.calls

    def set_profiling(self, on):
        pass  # per-kernel CUDA timing is not implemented yet


def _poison(t):
    """Fills a fresh tensor's storage with a value no kernel should produce by accident."""
    if t.dtype.is_floating_point:
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.view(torch.uint8).fill_(0x5A) if t.is_contiguous() else t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).max // 2 + 11)


def compile_cuda_entry(source, device=None, debug_dir="", fallbacks=None):
    """Compiles a captured graph for one CUDA device (emit, NVRTC for that device's
    architecture, module load) and returns a CudaRunner: runner(full_leaves) -> list of outputs,
    or False when a kernel met an integer division by zero (rerun eagerly).

    source: a finished single-segment Tracer (the device is its tensors' one CUDA device), or a
    _C.GraphBuilder whose outputs are set (then pass `device`, a CUDA ordinal or torch.device,
    and `fallbacks`, the callables of its fallback nodes by table index).
    Raises kiln.Unsupported when the program cannot run on CUDA (NVRTC or the driver missing,
    tensors on several devices), so the caller falls back with the reason."""
    _require_backend()
    if isinstance(source, _C.GraphBuilder):
        builder = source
    else:
        builder = source.builder
        if fallbacks is None:
            fallbacks = source.fallbacks
        devices = {t.device for t in source.leaves if isinstance(t, torch.Tensor)}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise _C.Unsupported("kiln: a CUDA program needs every tensor on one CUDA device, got "
                                 f"{sorted(map(str, devices))}")
        if device is None:
            device = next(iter(devices))
    if device is None:
        raise _C.Unsupported("kiln: compile_cuda_entry on a GraphBuilder needs the device")
    if isinstance(device, torch.device):
        device = device.index if device.index is not None else torch.cuda.current_device()
    if not _C.cuda_available():
        raise _C.Unsupported("kiln: CUDA is unavailable: " + _C.cuda_unavailable_reason())
    _prefer_torch_cublas()
    return CudaRunner(builder, int(device), debug_dir, fallbacks or ())


def compile_cuda_training(builder, forward_outputs, joint, device, fallbacks, debug_dir=""):
    """Partitions a training capture's joint graph (the builder's; _backward_capture.capture_joint
    described it) and compiles both halves for CUDA device `device` (an ordinal or a
    torch.device). Returns (the _C.CudaTraining, forward runner, backward runner); raises
    kiln.Unsupported as compile_cuda_entry does."""
    _require_backend()
    if isinstance(device, torch.device):
        device = device.index if device.index is not None else torch.cuda.current_device()
    if not _C.cuda_available():
        raise _C.Unsupported("kiln: CUDA is unavailable: " + _C.cuda_unavailable_reason())
    _prefer_torch_cublas()
    tp = _C.cuda_training(builder, forward_outputs, joint["tangents"], joint["backward_start"], device=int(device),
                          want_cubin=True, debug_dir=debug_dir)
    forward = CudaRunner(None, int(device), fallbacks=fallbacks, program=tp.forward, graph=tp.forward_graph)
    backward = CudaRunner(None, int(device), fallbacks=fallbacks, program=tp.backward, graph=tp.backward_graph)
    return tp, forward, backward


def _prefer_torch_cublas():
    """Points kiln's cuBLAS and cuBLASLt at the libraries PyTorch loaded (found in
    /proc/self/maps), so both use one copy of each."""
    prefer = {"libcublas.so": _C.cublas_prefer, "libcublasLt.so": _C.cublaslt_prefer}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                for prefix in list(prefer):
                    if os.path.basename(path).startswith(prefix):
                        prefer.pop(prefix)(path)
                if not prefer:
                    return
    except OSError:
        pass


class CudaEntry:
    """A guarded compiled CUDA program with _C.Entry's calling protocol: entry(full, grad) ->
    None on a guard miss, False when eager must redo the call, else the list of outputs."""

    def __init__(self, guards, runner):
        self.guards = guards
        self.program = runner

    def __call__(self, full, grad):
        if not self.guards.check(full, grad):
            return None
        return self.program(full)

    def last_failure(self):
        return self.program.last_failure()

    def failed_on_data_dependent_shape(self):
        return self.program.failed_on_data_dependent_shape()


def is_cuda_trace(tracer):
    """True when the traced tensors live on a CUDA device (the capture then compiles for CUDA)."""
    return any(isinstance(t, torch.Tensor) and t.device.type == "cuda" for t in tracer.leaves)
