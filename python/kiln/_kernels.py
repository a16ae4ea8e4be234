"""Inspection of generated kernels: kiln.kernels(f) and kiln.codegen(fn, *args)."""

from . import _C


class Kernel:
    """One generated kernel: .name, .target ('cpu' | 'cuda'), .phase ('forward' | 'backward': of a
    compiled training step), .source (LLVM IR of the kernel),
    .asm (assembly, produced on first access), .loop_ir (kiln's loop IR), .time_ns (total time
    spent in it while profiling was on)."""

    def __init__(self, program, info, target="cpu", phase="forward"):
        self._program = program
        self.phase = phase  # "forward" (also every inference kernel) or "backward" (a training step's)
        self.name = info["name"]
        self.symbol = info["symbol"]
        self.target = target
        self.source = info["source"]
        self.loop_ir = info["loop_ir"]
        self.time_ns = info["time_ns"]
        self._asm = None

    @property
    def asm(self):
        if self._asm is None:
            self._asm = self._program.kernel_asm(self.symbol)
        return self._asm

    def __repr__(self):
        return f"<kiln.Kernel {self.name} ({self.target}, {self.phase})>"


def _compiled_of(f):
    from ._compile import CompiledFunction
    from ._module import CompiledModule
    if isinstance(f, CompiledModule):
        return f._kiln
    if isinstance(f, CompiledFunction):
        return f
    raise TypeError("kiln.kernels expects a function or module returned by kiln.compile")


def kernels(f):
    """Kernels of every compiled variant of `f` (a kiln.compile result), oldest first."""
    out = []
    for program, phase in _compiled_of(f).compiled_programs_with_phase():
        out.extend(Kernel(program, info, target=getattr(program, "target", "cpu"), phase=phase)
                   for info in program.kernels())
    return out


def codegen(fn, *example_args, target="cpu", **example_kwargs):
    """Compiles `fn` for `target` ('cpu' or 'cuda') on example arguments and returns its kernels
    without keeping the compiled function. target='cuda' needs no GPU: the example arguments may
    be CPU tensors, and every kernel is compiled to PTX by NVRTC (see kiln._cuda)."""
    if target == "cuda":
        from ._cuda import codegen_cuda
        return codegen_cuda(fn, *example_args, **example_kwargs)
    if target != "cpu":
        raise ValueError(f"kiln.codegen: unknown target {target!r} (expected 'cpu' or 'cuda')")
    from ._compile import CompiledFunction
    f = CompiledFunction(fn)
    f(*example_args, **example_kwargs)
    return kernels(f)
