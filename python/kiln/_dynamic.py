"""When two captures of a function may become one dynamic program (Note [Dynamic sizes]
in runtime/dynamic_program.cpp): the policy and the guards; the fitting, lowering and proofs are
C++ (_C.GraphTemplate, _C.compile_dynamic).

Policy (as torch.compile's dynamic=None): the first call specialises. A later call that misses
only because tensor sizes changed -- same leaves, dtypes, ranks, plain values and results --
captures again, and the two captures are fitted to one size symbol; where that succeeds, one
program serves every size from then on and replaces the first specialisation. dynamic=False
never does this.
"""

import torch

from . import _C, _size_int
from ._snapshot import same_value

class CaptureRecord:
    """What a static CPU entry keeps so that a later capture at other sizes can pair with it."""

    __slots__ = ("builder", "leaves", "source_keys", "out_specs", "result_spec", "decided", "constraints", "joint")

    def __init__(self, builder, full, source_keys, out_specs, result_spec, decided, constraints=(), joint=None):
        self.builder = builder
        self.joint = joint  # a training step's joint structure (joint_key), or None
        self.decided = set(decided)  # leaves (int arguments) Python decided on
        self.constraints = list(constraints)  # Tracer.constraints: sizes compared with constants
        self.leaves = [("tensor", type(x), x.dtype, x.dim(), x.device, x.requires_grad)
                       if isinstance(x, torch.Tensor) else ("value", x) for x in full]
        self.source_keys = source_keys
        self.out_specs = out_specs
        self.result_spec = result_spec

    def pairs_with(self, other):
        """(None, changed ints) when `other` differs from this capture only in tensor sizes and
        in int arguments Python did not decide on -- changed ints: (leaf, value here, value
        there) -- else (why not, None)."""
        if (len(self.leaves) != len(other.leaves) or self.source_keys != other.source_keys
                or self.out_specs != other.out_specs or self.result_spec != other.result_spec):
            return "the calls differ in more than tensor sizes (arguments, state read or results)", None
        if self.joint != other.joint:
            return "the training steps differ in what they differentiate", None
        if self.constraints != other.constraints:
            return "Python compared sizes with other results (another branch)", None
        ints = []
        for i, (a, b) in enumerate(zip(self.leaves, other.leaves)):
            if a[0] != b[0]:
                return f"leaf {i} is a tensor in one call only", None
            if a[0] == "tensor" and a != b:
                return f"leaf {i} differs in type, dtype, rank, device or requires_grad", None
            if a[0] == "value" and not same_value(a[1], b[1]):
                if type(a[1]) is not int or type(b[1]) is not int:
                    return f"leaf {i} (a plain value) changed", None
                if i in self.decided or i in other.decided:
                    return f"leaf {i} (an int Python decided on) changed", None
                ints.append((i, a[1], b[1]))
        return None, ints


def joint_key(joint, forward_outputs):
    """What two training steps' joint graphs must share beyond the graph itself to be one
    dynamic training step: which outputs get gradients, for which inputs, the results' dtypes."""
    meta = tuple(None if m is None else (m[1], m[2]) for m in joint["output_meta"])
    return (forward_outputs, tuple(joint["differentiable"]), tuple(joint["tangents"]), joint["backward_start"],
            tuple(map(tuple, joint["grad_leaves"])), meta)


def ineligible(tracer, replay, mutations):
    """Why a capture cannot take part in a dynamic program, or None."""
    if _size_int.SIZES in tracer.decided:
        return f"Python decided on a tensor's size: {tracer.decided[_size_int.SIZES]}"
    if replay is not None:
        return "the function changes Python containers it is passed (replayed after each call)"
    if tracer.fallbacks:
        return "the program runs fallback ops"
    if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tracer.leaves):
        return "a tensor is not on the CPU (dynamic programs are CPU only so far)"
    return None


def symbol_range(template, constraints):
    """The values of the symbol for which every size comparison Python made (Tracer.constraints:
    k * size + c  op  const gave result) comes out the same, as (lo, hi); None when the
    comparisons cannot all hold (they held at both captures, so that means a kiln bug)."""
    lo, hi = _C.GraphTemplate.min_symbol, _C.GraphTemplate.max_symbol
    forms = {leaf: sizes for leaf, sizes, _ in template.inputs}
    negate = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
    flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    for leaf, dim, k, c, op, const, result in constraints:
        if leaf not in forms:
            continue  # a tensor read only for its size: its guard keeps that size exactly
        base, coeff = forms[leaf][dim]
        a, r = k * coeff, const - (k * base + c)  # a * s  op  r
        if not result:
            op = negate[op]
        if a == 0:
            continue  # a static size: the comparison cannot change
        if a < 0:
            a, r, op = -a, -r, flip[op]
        if op == "<":
            hi = min(hi, (r - 1) // a)
        elif op == "<=":
            hi = min(hi, r // a)
        elif op == ">":
            lo = max(lo, r // a + 1)
        else:
            lo = max(lo, -((-r) // a))
    return (lo, hi) if lo <= hi else None


def guards(static, template, symbols):
    """`static` (the second capture's guards) with its tensors' sizes and strides, and the int
    arguments that changed, replaced by their forms over the symbol, whose values are kept in
    `symbols` (lo, hi: symbol_range's answer, which keeps every size comparison Python made as
    it was)."""
    static.set_symbol_range(*symbols)
    for leaf, sizes, strides in template.inputs:
        if _depends(sizes, strides):
            static.make_symbolic(leaf, sizes, strides)
    for leaf, (base, coeff) in template.values:
        static.make_symbolic_value(leaf, base, coeff)
    return static


def static_marks_hold(template, full):
    """None when no dim marked static (kiln.mark_static, torch._dynamo.mark_static) follows the
    symbol; else which one does."""
    for leaf, sizes, _ in template.inputs:
        t = full[leaf] if 0 <= leaf < len(full) else None
        marked = set(getattr(t, "_kiln_static_dims", ())) | set(getattr(t, "_dynamo_static_indices", ()))
        for d in marked:
            if 0 <= d < len(sizes) and sizes[d][1] != 0:
                return f"leaf {leaf} size({d}) is marked static"
    return None


def _depends(sizes, strides):
    """Whether an input's size or stride forms use the symbol."""
    return any(c for _, c in sizes) or any(c for _, c in strides)


def written_apart(template, full, mutated):
    """None when no tensor written in place must stay apart in memory from a tensor whose sizes
    follow the symbol (the guards check that apartness over byte spans fixed at capture); else
    which pair."""
    changing = {leaf for leaf, sizes, strides in template.inputs if _depends(sizes, strides)}
    tensors = [i for i, t in enumerate(full) if isinstance(t, torch.Tensor)]
    for i in tensors:
        for j in tensors:
            if i < j and (i in mutated or j in mutated) and (i in changing or j in changing) and full[i] is not full[j]:
                return f"leaves {i} and {j}: one is written in place and their sizes change"
    return None


def symbolic_leaves(template):
    """Whether every symbolic input is an argument or a captured tensor the guards can check."""
    return all(leaf >= 0 for leaf, sizes, strides in template.inputs if _depends(sizes, strides))
