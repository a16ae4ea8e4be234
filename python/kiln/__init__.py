"""kiln: a JIT tracing and kernel-fusion compiler for PyTorch.

    f = kiln.compile(fn)          # or @kiln.compile, @kiln.compile(backend="eager"), a Module
    kiln.counters()               # captures, cache hits, recompiles, breaks, fallbacks
    kiln.kernels(f)               # generated kernels: name, target, source (LLVM IR), asm
    kiln.explain(fn, *args)       # graphs, graph breaks with reasons, fallback ops, guards
    kiln.reset()                  # forget compiled programs and counters

Knobs (environment, read at import; kiln.config.set(name, value) changes them later):
KILN_DISABLE, KILN_NUM_THREADS, KILN_LOG, KILN_DEBUG_DIR, KILN_CACHE_LIMIT, KILN_VERIFY,
KILN_OPT_LEVEL. See README.md.
"""

import weakref

import torch

from . import _C, _background, _counters, config
from ._compile import CompiledFunction
from ._explain import Explanation, explain
from ._kernels import Kernel, codegen, kernels
from ._module import CompiledModule
from ._cuda import cuda_status
from .minify import minify

__version__ = "0.1.0"
__all__ = ["compile", "explain", "counters", "reset", "kernels", "codegen", "config", "Unsupported", "cache_info",
           "mark_static",
           "clear_cache", "wait"]

Unsupported = _C.Unsupported
from ._accuracy import AccuracyError  # noqa: E402

_C.set_torch_handles(torch.empty_strided,
                     {name: dt for dt, name in __import__("kiln._trace", fromlist=["x"]).DTYPE_NAMES.items()})

if hasattr(_C, "blas_prefer") and torch.backends.mkl.is_available():
    # Matrix products run on the MKL torch carries (same speed and rounding as eager's).
    import os as _os
    _C.blas_prefer(_os.path.join(_os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))

_live = weakref.WeakSet()

from . import dynamo_backend as _dynamo_backend  # noqa: E402

_dynamo_backend.register()


def compile(fn=None, *, backend="kiln", fullgraph=False, dynamic=None, background=None):
    """Compiles a function or an nn.Module. Usable as `compile(f)`, `@compile` and
    `@compile(backend=...)`. backend="eager" runs everything eagerly (for debugging).
    background=True compiles on a background thread while calls run eagerly, swapping each
    program in when it is ready (None: the KILN_BACKGROUND knob; kiln.wait() waits for them)."""
    opts = dict(backend=backend, fullgraph=fullgraph, dynamic=dynamic, background=background)
    if fn is None:
        return lambda f: compile(f, **opts)
    if isinstance(fn, torch.nn.Module):
        out = CompiledModule(fn, **opts)
        _live.add(out._kiln)
        return out
    if not callable(fn):
        raise TypeError(f"kiln.compile expects a function or an nn.Module, got {type(fn).__name__}")
    out = CompiledFunction(fn, **opts)
    _live.add(out)
    return out


def counters():
    """Counts since the last reset(): captures, cache_hits, recompiles, graph_breaks,
    fallback_ops, eager_calls, plus fallback_op_counts and reasons (text -> times)."""
    out = _counters.snapshot()
    if hasattr(_C, "fast_hits"):
        out["cache_hits"] += _C.fast_hits()
    return out


def cache_info():
    """The disk cache of compiled kernels (object files of CPU programs, NVRTC's PTX and cubins):
    {"enabled", "cpu": {"dir", "entries", "bytes", "hits", "misses", "writes"}, "cuda": {...}},
    the last three counted in this process. KILN_CACHE=0 turns it off, KILN_CACHE_DIR moves it,
    KILN_CACHE_SIZE_MB bounds each kind (Note [Disk cache] in support/disk_cache.h)."""
    out = {"enabled": bool(_C.disk_cache_usage("cpu")[0])}
    for kind in ("cpu", "cuda"):
        d, n, b, hits, misses, writes = _C.disk_cache_usage(kind)
        out[kind] = {"dir": d, "entries": n, "bytes": b, "hits": hits, "misses": misses, "writes": writes}
    return out


def clear_cache():
    """Deletes every entry of the disk cache; returns how many files went. Compiled programs
    in this process stay (kiln.reset() forgets those)."""
    return _C.disk_cache_clear("cpu") + _C.disk_cache_clear("cuda")


def mark_static(t, dim):
    """Keeps size `dim` of tensor `t` out of dynamic programs: a function called with another
    size there compiles a program for that size (Changing sizes in the README). Dims marked
    with torch._dynamo.mark_static count too. Returns `t`."""
    dims = getattr(t, "_kiln_static_dims", None)
    if dims is None:
        dims = set()
        t._kiln_static_dims = dims
    dims.add(dim % t.dim() if t.dim() else dim)
    return t


def wait(timeout=None):
    """Blocks until every background compile started so far has finished (or `timeout`
    seconds passed); True when none is left. The next call of each function swaps its program
    in (Note [Background compiles] in _background.py)."""
    return _background.wait(timeout)


def reset():
    """Forgets every compiled program and zeroes the counters (after any background compile
    has finished)."""
    _background.wait()
    for f in list(_live):
        f._entries.clear()
        f._pending_entries = 0
        if hasattr(f._fast, "clear"):
            f._fast.clear()
        f._entry_count = 0
        f._eager_only = None
    _counters.reset()
    if hasattr(_C, "reset_fast_hits"):
        _C.reset_fast_hits()
