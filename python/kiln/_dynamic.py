"""When two captures of a function may become one dynamic program (Note [Dynamic leading sizes]
in runtime/dynamic_program.cpp): the policy and the guards; the fitting, lowering and proofs are
C++ (_C.GraphTemplate, _C.compile_dynamic).

Policy (as torch.compile's dynamic=None): the first call specialises. A later call that misses
only because tensor sizes changed -- same leaves, dtypes, ranks, plain values and results --
captures again, and the two captures are fitted to one size symbol; where that succeeds, one
program serves every size from then on and replaces the first specialisation. dynamic=False
never does this.
"""

import torch

from . import _C
from ._snapshot import Snapshot

_PLAIN = (int, float, bool, str, complex, type(None))


def _same_plain(a, b):
    """Whether two non-tensor leaves are one value for the trace (a float by its bits, as the
    guards compare it; anything else but plain values by identity)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) in _PLAIN:
        return repr(a) == repr(b)  # repr tells -0.0 from 0.0 and keeps every NaN one value
    if isinstance(a, (torch.dtype, torch.device, Snapshot)):  # a Snapshot: what the guards compare
        return a == b
    return False


class CaptureRecord:
    """What a static CPU entry keeps so that a later capture at other sizes can pair with it."""

    __slots__ = ("builder", "leaves", "source_keys", "out_specs", "result_spec")

    def __init__(self, builder, full, source_keys, out_specs, result_spec):
        self.builder = builder
        self.leaves = [("tensor", type(x), x.dtype, x.dim(), x.device, x.requires_grad)
                       if isinstance(x, torch.Tensor) else ("value", x) for x in full]
        self.source_keys = source_keys
        self.out_specs = out_specs
        self.result_spec = result_spec

    def pairs_with(self, other):
        """None when `other` differs from this capture only in tensor sizes; else why not."""
        if (len(self.leaves) != len(other.leaves) or self.source_keys != other.source_keys
                or self.out_specs != other.out_specs or self.result_spec != other.result_spec):
            return "the calls differ in more than tensor sizes (arguments, state read or results)"
        for i, (a, b) in enumerate(zip(self.leaves, other.leaves)):
            if a[0] != b[0]:
                return f"leaf {i} is a tensor in one call only"
            if a[0] == "tensor" and a != b:
                return f"leaf {i} differs in type, dtype, rank, device or requires_grad"
            if a[0] == "value" and not _same_plain(a[1], b[1]):
                return f"leaf {i} (a plain value) changed"
        return None


def ineligible(tracer, training, replay, mutations):
    """Why a capture cannot take part in a dynamic program, or None."""
    if tracer.size_read is not None:
        return f"Python decided on a tensor's size: {tracer.size_read}"
    if training:
        return "a training step (dynamic programs are inference only so far)"
    if replay is not None or mutations or tracer.mutations:
        return "the function writes to its arguments"
    if tracer.fallbacks:
        return "the program runs fallback ops"
    if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tracer.leaves):
        return "a tensor is not on the CPU (dynamic programs are CPU only so far)"
    return None


def guards(static, template):
    """`static` (the second capture's guards) with its tensors' sizes and strides replaced by
    their forms over the symbol."""
    lo, hi = _C.GraphTemplate.min_symbol, _C.GraphTemplate.max_symbol
    for leaf, sizes, strides in template.inputs:
        if any(c for _, c in sizes) or any(c for _, c in strides):
            static.make_symbolic(leaf, sizes, strides, lo, hi)
    return static


def symbolic_leaves(template):
    """Whether every symbolic input is an argument or a captured tensor the guards can check."""
    return all(leaf >= 0 for leaf, sizes, strides in template.inputs
               if any(c for _, c in sizes) or any(c for _, c in strides))
