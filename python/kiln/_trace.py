"""The tracer: runs a function eagerly under a TorchDispatchMode and records every ATen op into
the C++ GraphBuilder.

Why dispatch level (DESIGN.md proposed a TorchFunctionMode): at the dispatcher every tensor op,
indexing included, arrives as a canonical ATen overload with a fixed schema, so arguments are
normalised by name and each op has one handler, whatever Python spelling produced it. A small
TorchFunctionMode rides along only to catch the ways data leaves torch without an ATen op
(`.numpy()`, `__array__`), which must stop the capture.

Soundness: every tensor an op reads must be a graph input, a recorded result or a captured
tensor (module parameter/buffer, closure cell, referenced global). Anything else means the
tracer did not see how it was made, and the capture fails: the call runs eagerly instead.
"""

import os
import sys
import traceback
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from . import _C, _size_int
from ._flatten import flatten, unflatten

aten = torch.ops.aten

DTYPE_NAMES = {
    torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16",
    torch.int32: "int32", torch.int64: "int64", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64",
}
NAME_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


def _layout_key(shape, strides):
    """The strides that matter for a layout: those of dims longer than 1."""
    return [st for n, st in zip(shape, strides) if n > 1]


_DEVICES = ("cpu", "cuda")  # devices kiln compiles for; others (meta, ...) stop the capture


class CaptureFailed(Exception):
    """The trace cannot become a graph; `kind` is 'break' (data-dependent Python) or 'fallback'."""

    def __init__(self, reason, kind="fallback", op=None, location=None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.op = op
        self.location = location


# The package folders of kiln and torch: frames inside them are not the user's code. (Matching
# "/kiln/" in the path also skipped the user's own files when they lived in a folder named kiln,
# as a clone of this repository does.)
_INTERNAL_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def user_location():
    """The innermost stack frame outside torch and kiln, as 'file:line in fn: code'."""
    for frame in reversed(traceback.extract_stack()):
        f = frame.filename
        if os.path.abspath(f).startswith(_INTERNAL_DIRS) or f.startswith("<frozen"):
            continue
        return f"{f}:{frame.lineno} in {frame.name}: {frame.line}"
    return "?"


def _bind(func, args, kwargs):
    out = {}
    for i, a in enumerate(func._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


DATA_DEPENDENT = {
    aten._local_scalar_dense: "reads a tensor's value into Python (.item(), bool(), int(), float(), .tolist())",
    aten.is_nonzero: "converts a tensor to a Python bool",
    aten.item: "reads a tensor's value into Python (.item())",
    aten.equal: "torch.equal returns a Python bool",
    aten.nonzero: "has a data-dependent shape",
    aten.masked_select: "has a data-dependent shape",
    aten._unique2: "has a data-dependent shape",
    aten.unique_dim: "has a data-dependent shape",
    aten.unique_consecutive: "has a data-dependent shape",
    aten.index: "indexes with a boolean mask: a data-dependent shape",
    aten.repeat_interleave: "repeats by a tensor of counts: a data-dependent shape",
}


# Ops whose Python result (a number or bool) decides what the function does next. They split the
# trace into segments; the value read becomes the key of the next segment (see _segments.py).
READS = {aten._local_scalar_dense, aten.is_nonzero, aten.item, aten.equal}

# Ops whose result's shape depends on tensor data (Note [Shape reads]).
SHAPE_READS = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive}


def is_shape_read(func, args, kwargs):
    """Note [Shape reads]: an op whose result's shape is data (nonzero, masked_select, unique,
    `x[mask]`, repeat_interleave by a tensor) ends a segment, as a value read into Python does.
    A compiled call runs it eagerly after the segment, and its result's sizes and strides are
    the key of the next segment, which takes the result as an input: each size met compiles its
    own continuation (up to the cache limit), and nothing is reused on a size not checked."""
    packet = func.overloadpacket
    if packet in SHAPE_READS:
        return True
    if func is aten.index.Tensor:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func is aten.repeat_interleave.Tensor:
        return (args[1] if len(args) > 1 else kwargs.get("output_size")) is None
    if func is aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size", args[3] if len(args) > 3 else None) is None
    return False


def read_key(value):
    """Hashable key of a value read from a tensor (NaN equal to NaN; 1 and True apart); of a
    shape read's result, its tensors' dtypes, sizes and strides."""
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), tuple(value.stride()))
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return tuple(read_key(t) for t in value)
    return (type(value).__name__, value)


class _Segment:
    """One straight-line piece of a trace: a graph, and the values read at its end."""

    def __init__(self, default_float):
        self.builder = _C.GraphBuilder()
        self.builder.set_default_float(default_float)
        self.values = {}       # id(tensor) -> value id in this segment
        self.layouts = {}      # value id -> strides eager gave it
        self.input_vids = set()
        self.carried = []      # (segment index, value id there) per carried input, in order
        self.carried_vids = []  # this segment's value id of each carried input
        # (_Fallback-like callable, [value ids], key of the value read, value ids of its result
        # tensors or None): a shape read's results get negative ids (Note [Shape reads]), taken
        # from the read's result when the compiled segment has run, never graph outputs
        self.reads = []
        self.needed = []       # value ids later segments or the result use (its outputs), ordered
        self.shape_outputs = 0  # result tensors of its shape reads
        self.fresh = set()  # outputs eager made as new tensors: never returned as argument views
        self.ops = 0
        # A training capture records each segment's backward from these (_segments.Tree): the
        # traced tensor of each needed value (held, so that it outlives the trace), the tensor of
        # each carried input, and the value id of each call leaf the segment reads.
        self.out_tensors = {}
        self.carried_tensors = []
        self.leaf_vids = {}
        # Needed values a later segment computes with or the result returns (not only read into
        # Python): the ones a segment's backward differentiates (Tracer.prune_flows).
        self.flows = set()
        self.returned = set()  # needed values the result returns or an argument takes

    def need(self, vid, tensor=None):
        if vid >= 0 and vid not in self.needed:
            self.needed.append(vid)
        if vid >= 0 and tensor is not None:
            self.out_tensors.setdefault(vid, tensor)



class _Slot:
    """Marks where a tensor operand goes in a fallback op's recorded arguments."""
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


def _contiguous(shape):
    out, acc = [], 1
    for n in reversed(list(shape)):
        out.append(acc)
        acc *= max(int(n), 1)
    return out[::-1]


def _dense(shape, strides):
    """True when the strides are a permutation of a contiguous layout (ignoring size-1 dims):
    the layouts lower_to_loops keeps for stored values."""
    dims = sorted((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: -strides[d])
    expect = 1
    for d in reversed(dims):
        if strides[d] != expect:
            return False
        expect *= shape[d]
    return True


def _template(args, kwargs):
    """An op's arguments with each tensor replaced by a _Slot: (args, kwargs, the tensors)."""
    tensors = []

    def go(x):
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return _Slot(len(tensors) - 1)
        if isinstance(x, (list, tuple)):
            return type(x)(go(y) for y in x)
        if isinstance(x, dict):
            return {k: go(v) for k, v in x.items()}
        return x

    return go(tuple(args)), go(dict(kwargs)), tensors


def _fill_slots(x, tensors):
    """`x` with each _Slot replaced by its tensor. A module-level function, not a closure that
    calls itself: such a closure is a reference cycle that would keep every operand alive until
    the garbage collector ran, so intermediate buffers got fresh (page-faulting) memory each call."""
    if isinstance(x, _Slot):
        return tensors[x.index]
    if isinstance(x, (list, tuple)):
        return type(x)(_fill_slots(y, tensors) for y in x)
    if isinstance(x, dict):
        return {k: _fill_slots(v, tensors) for k, v in x.items()}
    return x


def _has_slot(x):
    if isinstance(x, _Slot):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_slot(y) for y in x)
    if isinstance(x, dict):
        return any(_has_slot(y) for y in x.values())
    return False


class _Fallback:
    """Re-runs one recorded ATen op on new tensor operands (a fallback node's callable)."""

    def __init__(self, func, args, kwargs, keep=None):
        self.func, self.args, self.kwargs = func, args, kwargs
        # Where the tensor operands go when every one is a top-level argument (a convolution's
        # input, weight and bias; its stride and padding lists hold numbers only): filled by
        # position on each call instead of a walk of the whole template.
        self._flat = None
        if not kwargs or all(not _has_slot(v) for v in kwargs.values()):
            if all(isinstance(a, _Slot) or not _has_slot(a) for a in args):
                self._flat = [(i, a.index) for i, a in enumerate(args) if isinstance(a, _Slot)]
        # Positions of the tensor results when some are None (convolution_backward without the
        # input's gradient): the program binds only those, in order.
        self.keep = keep
        # Whether grad mode was on when the op was traced. Some ops answer differently without
        # it (mkldnn_rnn_layer returns no workspace, which its backward needs), and a training
        # step's forward runs inside autograd.Function.forward, where it is off: such an op runs
        # with grad mode on again, on detached operands (so nothing is recorded for autograd).
        self.grad = torch.is_grad_enabled()

    def __call__(self, *tensors):
        if self.grad and not torch.is_grad_enabled():
            with torch.enable_grad():
                return self._run(tuple(t.detach() for t in tensors))
        return self._run(tensors)

    def _run(self, tensors):
        if self._flat is not None:
            args = list(self.args)
            for i, k in self._flat:
                args[i] = tensors[k]
            out = self.func(*args, **self.kwargs)
        else:
            out = self.func(*_fill_slots(self.args, tensors), **_fill_slots(self.kwargs, tensors))
        return out if self.keep is None else tuple(out[i] for i in self.keep)

    def __repr__(self):
        return str(self.func)


class _FreshFill(_Fallback):
    """Runs an in-place random fill (`bernoulli_`, `uniform_`, `normal_`, ...) on a new tensor
    with the layout eager's tensor had. These ops overwrite every element without reading it,
    but which random number lands on which element follows the tensor's memory order (ATen's
    CPU kernels draw serially along it): the functional forms (bernoulli.p) fill a contiguous
    tensor, so a dropout mask on a transposed activation came out permuted against eager's."""

    def __init__(self, func, args, kwargs, shape, stride, dtype, device):
        super().__init__(func, args, kwargs)
        self.shape, self.stride, self.dtype, self.device = list(shape), list(stride), dtype, device

    def _run(self, tensors):
        t = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
        args = _fill_slots(self.args, tensors)
        self.func(t, *args[1:], **_fill_slots(self.kwargs, tensors))
        return t


class _EscapeWatch(TorchFunctionMode):
    """Catches ways tensor data reaches Python without an ATen op."""

    ESCAPES = {torch.Tensor.numpy: ".numpy()", torch.Tensor.__array__: "__array__ (numpy conversion)"}
    # Autograd hooks run Python during a backward that a compiled backward would not run.
    HOOKS = {torch.Tensor.register_hook: "register_hook", torch.Tensor.retain_grad: "retain_grad",
             torch.Tensor.register_post_accumulate_grad_hook: "register_post_accumulate_grad_hook"}

    def __init__(self, tracer):
        super().__init__()
        self.tracer = tracer

    # Python reading a size: SizeInts, which mark the capture when Python decides on them
    # (_size_int.py; Tracer.decided).
    SIZE_READS = {torch.Tensor.shape.__get__, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.nelement}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SIZE_READS:
            return self._size_read(func, args, kwargs)
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1:
            self._note_slice_clamps(args[0], args[1])
        if func is torch.Tensor.__len__:  # len() turns the result into a plain int
            _size_int.mark("len() of a tensor")
        what = self.ESCAPES.get(func)
        if what is not None:
            self.tracer.fail(CaptureFailed(f"tensor data leaves torch through {what}", kind="break",
                                           location=user_location()))
        hook = self.HOOKS.get(func)
        if hook is not None:
            self.tracer.fail(CaptureFailed(f"autograd: the function calls {hook} (a hook kiln's compiled backward "
                                           "would not run)", location=user_location()))
        data = args[1] if func is torch.Tensor.new_tensor and len(args) > 1 else args[0] if args else None
        if func in (torch.tensor, torch.as_tensor, torch.Tensor.new_tensor) and _python_literal(data):
            # torch.tensor([1.0, 2.0]), x.new_tensor([...]): the fresh tensor's values come from
            # Python numbers, which kiln bakes into the code wherever an op takes them (see
            # _lift_fresh).
            self.tracer.literal_depth += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.tracer.literal_depth -= 1
        return func(*args, **(kwargs or {}))


    def _note_slice_clamps(self, t, index):
        """A slice bound past its dim (x[:3] of 2 rows) is clamped by Python's indexing before
        any ATen op (a slice that covers the dim becomes an alias), so the graph cannot show
        it: it is noted as a size rule here (Note [Dynamic sizes]; the ATen-level slice notes
        its own, GraphEditor::clamp_slice)."""
        items = index if isinstance(index, tuple) else (index,)

        def width(i):  # the tensor dims an index item consumes; None when unknown
            if i is None or isinstance(i, bool):
                return 0
            if isinstance(i, (int, slice, list)):
                return 1
            if isinstance(i, torch.Tensor):
                return i.dim() if i.dtype == torch.bool else 1
            return None

        ell = next((k for k, i in enumerate(items) if i is Ellipsis), len(items))
        dims = {}
        d = 0
        for k in range(ell):
            w = width(items[k])
            if w is None:
                break
            dims[k], d = d, d + w
        d = t.dim()
        for k in range(len(items) - 1, ell, -1):
            w = width(items[k])
            if w is None:
                break
            d -= w
            dims[k] = d
        for k, i in enumerate(items):
            if not isinstance(i, slice):
                continue
            raw = slice(_size_int._raw(i.start), _size_int._raw(i.stop), _size_int._raw(i.step))
            bounds = [b for b in (raw.start, raw.stop) if isinstance(b, int)]
            if k not in dims or not 0 <= dims[k] < t.dim():
                if bounds:
                    _size_int.mark("a slice bound of a dim kiln cannot tell")
                continue
            n = t.shape[dims[k]]
            if any(b > n or b < -n for b in bounds):
                self.tracer.seg.builder.note_size_rule(n, len(range(*raw.indices(n))))

    def _size_read(self, func, args, kwargs):
        """A size read as SizeInts; read from an argument, with their origin (leaf, dim)."""
        value = func(*args, **(kwargs or {}))
        if func in (torch.Tensor.numel, torch.Tensor.nelement):
            return _size_int.wrap(value)  # a product of sizes: no origin
        t = args[0]
        leaf = next((i for i, x in enumerate(self.tracer.leaves) if x is t), None)
        if leaf is None or not isinstance(value, int):  # an intermediate's sizes, or a whole torch.Size
            return _size_int.wrap(value, leaf=leaf)
        d = args[1] if len(args) > 1 else (kwargs or {}).get("dim")  # x.size(d)
        return _size_int.wrap(value, leaf=leaf if isinstance(d, int) else None,
                              dim=d % t.dim() if isinstance(d, int) else None)


# In-place random fills: they overwrite their tensor without reading it (see _FreshFill).
_RANDOM_FILLS = {aten.bernoulli_, aten.uniform_, aten.normal_, aten.random_, aten.exponential_,
                 aten.geometric_, aten.cauchy_, aten.log_normal_}

LITERAL_LIMIT = 64  # elements of a torch.tensor(list) baked into the code as constants


def _python_literal(data, budget=None):
    """Whether `data` is a Python number or bool, or a (nested) list/tuple of them, with at most
    LITERAL_LIMIT of them (not a numpy array or anything else whose contents no guard covers)."""
    budget = budget if budget is not None else [LITERAL_LIMIT]
    if isinstance(data, (bool, int, float)):
        budget[0] -= 1
        return budget[0] >= 0
    if isinstance(data, (list, tuple)):
        return all(_python_literal(d, budget) for d in data)
    return False


class Tracer(TorchDispatchMode):
    """Records ATen ops into a GraphBuilder while they run for real."""

    def __init__(self, leaves, captured_candidates, target=None):
        super().__init__()
        #: "cuda" when CPU example tensors are traced for the CUDA code generator
        #: (kiln.codegen(target="cuda")): handlers then record what a CUDA capture would.
        self.target = target
        self.default_float = DTYPE_NAMES[torch.get_default_dtype()]
        self.segments = [_Segment(self.default_float)]
        self.pending_cut = False  # a value was read: the next op starts a new segment
        self.breaks = []          # (reason, location) of each value read
        self.mutations = {}       # leaf index -> (segment, value id, tensor): its value after the call
        self.silent_updates = set()  # leaves among them eager writes without a version bump
        self.views = {}           # id(view) -> (base, dim, start, end, step, shape before squeeze or None)
        self.leaf_index = {}    # id(leaf tensor) -> leaf position
        self.live = {}          # id(tensor) -> weak reference, for every tensor the maps mention
        self.leaves = leaves    # call leaves (captured tensors get appended)
        self.candidates = captured_candidates  # id(tensor) -> (source, tensor)
        self.captured = []      # sources of captured tensors, in leaf order after the args
        self.failure = None
        self.carried_into = {}  # (segment, value id) -> the later segments that read it carried
        self.current_op = None
        self.literal_depth = 0  # inside torch.tensor(python numbers): see _EscapeWatch
        # Where Python first decided on a value it read as a size or got as an int argument
        # (compared, branched on, converted it: _size_int.py), per source (_size_int.SIZES or
        # a leaf index). Such values cannot follow a dynamic program's symbol (Note [Dynamic
        # leading sizes] in runtime/dynamic_program.cpp).
        self.decided = {}
        # Comparisons of argument sizes with constants: relation guards (_size_int.constrain).
        self.constraints = []
        self.fallbacks = []     # _Fallback per fallback node, by table index
        self.func = None        # the op being recorded (dtype_name reads it while inputs are added)
        self.in_backward = False  # recording autograd's backward of the traced forward (_backward_capture)
        self.current = None       # the segment whose backward is recorded (None: the last one)
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                self._add_leaf_input(leaf, i)

    # -- bookkeeping ------------------------------------------------------------------------
    # The segment being recorded: its builder, value map, layouts and inputs. (`current`: the
    # segment whose backward is being recorded, else the last one.)
    seg = property(lambda self: self.segments[-1 if self.current is None else self.current])
    builder = property(lambda self: self.seg.builder)
    values = property(lambda self: self.seg.values)
    layouts = property(lambda self: self.seg.layouts)
    input_vids = property(lambda self: self.seg.input_vids)

    def dtype_name(self, dtype):
        name = DTYPE_NAMES.get(dtype)
        if name is None:
            raise CaptureFailed(f"dtype {dtype} is not supported",
                                op=str(self.func) if self.func is not None else None)
        return name

    def _add_leaf_input(self, t, index):
        if t.layout != torch.strided:
            raise CaptureFailed(f"{t.layout} tensors are not supported")
        if t.device.type not in _DEVICES:
            # A meta tensor has no data: a compiled kernel would read a null pointer.
            raise CaptureFailed(f"{t.device.type} tensors are not supported")
        vid = self.builder.add_input(self.dtype_name(t.dtype), list(t.shape), list(t.stride()), index)
        self.leaf_index[id(t)] = index
        self.seg.leaf_vids[index] = vid
        self.input_vids.add(vid)
        self.layouts[vid] = list(t.stride())
        self.values[id(t)] = vid
        self._watch(t)
        return vid

    def add_tangent(self, t, index):
        """A gradient of a forward output (autograd's grad_output), as graph input `index`: what
        the recorded backward starts from."""
        vid = self.builder.add_input(self.dtype_name(t.dtype), list(t.shape), list(t.stride()), index)
        self.input_vids.add(vid)
        self.layouts[vid] = list(t.stride())
        self.values[id(t)] = vid
        self._watch(t)
        return vid

    def value_of(self, t):
        vid = self.values.get(id(t))
        if vid is not None:
            return vid
        index = self.leaf_index.get(id(t))
        if index is not None and index in self.mutations:
            # an argument written in place by an earlier segment: its new value, not the
            # caller's tensor (written back only after the call)
            k, src, _ = self.mutations[index]
            return self._carry(t, k, src)
        if index is not None:  # a leaf first used in a later segment
            return self._add_leaf_input(t, index)
        if self.in_backward:
            # A segment's backward reads what its forward made or took in, nothing else.
            raise CaptureFailed(f"autograd: the backward of a segment reads a tensor its forward did not "
                                f"see ({self.func})", op=str(self.func))
        for k in range(len(self.segments) - 2, -1, -1):
            src = self.segments[k].values.get(id(t))
            if src is not None:  # made by an earlier segment: carried in
                return self._carry(t, k, src)
        cand = self.candidates.get(id(t))
        if cand is not None:
            source, tensor = cand
            index = len(self.leaves)
            self.leaves.append(tensor)
            self.captured.append(source)
            return self._add_leaf_input(tensor, index)
        raise CaptureFailed(
            f"{self.func} reads a tensor that is neither an argument, a result of a traced op, "
            f"nor a parameter/buffer/closure/global the function reaches", op=str(self.func))

    def _carry(self, t, k, src):
        """Makes tensor `t` (value `src` of segment k) an input of the current segment. Its
        leaf index is fixed once the trace is complete (after every call leaf)."""
        seg = self.seg
        self.segments[k].need(src, t)
        self.segments[k].flows.add(src)
        self.carried_into.setdefault((k, src), set()).add(len(self.segments) - 1)
        # The producing segment stores the value in its preferred layout when that is dense,
        # else contiguously (lower_to_loops' loop_order): read it the same way. A shape read's
        # result comes as eager made it (its strides are part of the key).
        strides = list(t.stride()) if src < 0 or _dense(t.shape, t.stride()) else _contiguous(t.shape)
        vid = self.builder.add_input(self.dtype_name(t.dtype), list(t.shape), strides, -1)
        seg.carried.append((k, src))
        seg.carried_vids.append(vid)
        seg.carried_tensors.append(t)
        seg.input_vids.add(vid)
        seg.layouts[vid] = strides
        seg.values[id(t)] = vid
        return vid

    def _watch(self, t):
        """Tracks `t` without keeping it alive. When it dies, its id leaves every map, so a new
        tensor that reuses the id is never taken for it, and a write through a view is not
        refused for the sake of views nobody can read any more."""
        tid = id(t)
        if tid in self.live:
            return
        self.live[tid] = weakref.ref(t)
        # _forget runs inside any allocation that triggers a collection, also in the middle of
        # a loop over these maps: loops over them iterate copies (dict.copy() allocates once,
        # before it reads the table), never the maps themselves.
        weakref.finalize(t, self._forget, tid)

    def _forget(self, tid):
        self.live.pop(tid, None)
        self.views.pop(tid, None)
        for seg in self.segments:
            seg.values.pop(tid, None)

    def operand(self, x):
        if isinstance(x, torch.Tensor):
            return (0, self.value_of(x))
        if isinstance(x, Value):
            return (0, x.vid)
        if isinstance(x, bool):
            return (3, x)
        if isinstance(x, int):
            return (2, x)
        if isinstance(x, float):
            return (1, x)
        raise CaptureFailed(f"{self.func} has an operand of type {type(x).__name__}", op=str(self.func))

    def call(self, op, operands, ints=(), floats=(), dtype="", int_value=0):
        """Records `op` on tensors / numbers; returns a value id."""
        return self.builder.call(op, [self.operand(x) for x in operands], list(ints), list(floats),
                                 dtype, int_value)

    def call_value(self, op, value_ids, ints=(), floats=(), dtype=""):
        """Like call, on value ids already recorded."""
        return self.builder.call(op, [(0, v) for v in value_ids], list(ints), list(floats), dtype, 0)

    def fail(self, err):
        # Kept for counters and explain: without its traceback, whose frames hold the traced
        # call's tensors (activations, the caller's batch) for as long as the entry lives.
        err.__traceback__ = err.__context__ = err.__cause__ = None
        if self.failure is None:
            if err.location is None:
                err.location = user_location()
            self.failure = err

    # -- the hook ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.failure is not None:
            return out
        self.func = func
        try:
            self._record(func, args, kwargs, out)
        except CaptureFailed as e:
            self.fail(e)
        except Exception as e:  # noqa: BLE001
            # The op already ran for real; failing to record it must stop the capture, never
            # change what the user's function does. (C++ Unsupported/InternalError also reach
            # Python as plain RuntimeError: _C registers no translator for them.)
            self.fail(CaptureFailed(f"{func}: {e}", op=str(func)))
        return out

    def _record(self, func, args, kwargs, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.device.type not in _DEVICES:
                raise CaptureFailed(f"{func} makes a {t.device.type} tensor (not supported)", op=str(func))
        packet = func.overloadpacket
        if packet in READS:
            self._record_read(func, args, kwargs, out)
            return
        if packet in DATA_DEPENDENT and is_shape_read(func, args, kwargs):
            self._record_read(func, args, kwargs, out, shape=True)
            return
        if self.pending_cut:
            self.segments.append(_Segment(self.default_float))
            self.pending_cut = False
        self.seg.ops += 1
        if func._schema.is_mutable:
            self._record_inplace(func, args, kwargs, out)
            return
        handler = HANDLERS.get(packet)
        if handler is None:
            self._record_fallback(func, args, kwargs, out)
            return
        self.current_op = packet.__name__
        try:
            self._record_handled(func, args, kwargs, out, handler)
        except NoLowering:
            self._record_fallback(func, args, kwargs, out)

    def _record_handled(self, func, args, kwargs, out, handler):
        if isinstance(out, torch.Tensor):
            self._bind_result(out, handler(self, _bind(func, args, kwargs), out))
        elif isinstance(out, (tuple, list)) and all(t is None or isinstance(t, torch.Tensor) for t in out):
            # None: a result the op was asked not to compute (native_layer_norm_backward's
            # output_mask); its handler returns None there too.
            vids = handler(self, _bind(func, args, kwargs), out)
            if not isinstance(vids, list) or len(vids) != len(out):
                raise CaptureFailed(f"{func} returns {len(out)} tensors; kiln records one", op=str(func))
            for t, vid in zip(out, vids):
                if vid is not None and t is not None:  # a value recorded for a None result is dead
                    self._bind_result(t, vid)
        else:
            raise CaptureFailed(f"{func} returns {type(out).__name__}", op=str(func))

    def _record_read(self, func, args, kwargs, out, shape=False):
        """A value read into Python (`.item()`, `bool(t)`, ...): the segment ends here, and the
        value becomes the key under which the rest of the trace is stored. Consecutive reads
        with no op between them (`.tolist()`) belong to the same segment end."""
        if self.in_backward:
            raise CaptureFailed(f"autograd: the backward of the function reads a value into Python ({func})",
                                op=str(func))
        targs, tkwargs, tensors = _template(args, kwargs)
        vids = [self.value_of(t) for t in tensors]
        for v, t in zip(vids, tensors):
            self.seg.need(v, t)
        out_vids = None
        if shape:  # Note [Shape reads]: later segments take its results from the read
            results = list(out) if isinstance(out, (tuple, list)) else [out]
            if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in results):
                raise CaptureFailed(f"{func} returns {type(out).__name__}", op=str(func))
            out_vids = []
            for t in results:
                self.seg.shape_outputs += 1
                out_vids.append(-self.seg.shape_outputs)
                self.seg.values[id(t)] = out_vids[-1]
                self._watch(t)
        self.seg.reads.append((_Fallback(func, targs, tkwargs), vids, read_key(out), out_vids))
        self.breaks.append((f"graph break: {func} {DATA_DEPENDENT.get(func.overloadpacket, 'reads a value')}",
                            user_location()))
        self.pending_cut = True

    def _record_fallback(self, func, args, kwargs, out, callable_=None):
        """An op kiln has no lowering for runs eagerly inside the compiled program: its tensor
        operands become graph values, everything else in its arguments is kept as recorded (those
        values derive from guarded arguments, shapes, or constants). `callable_`: what runs it
        (default: func on the recorded arguments), taking the same tensor operands."""
        targs, tkwargs, tensors = _template(args, kwargs)
        results = list(out) if isinstance(out, (tuple, list)) else [out]
        keep = None
        if isinstance(out, (tuple, list)) and any(t is None for t in results):
            keep = [i for i, t in enumerate(results) if t is not None]
            results = [results[i] for i in keep]
        if not results or not all(isinstance(t, torch.Tensor) for t in results):
            raise CaptureFailed(f"kiln has no lowering for {func}, and it returns {type(out).__name__}", op=str(func))
        for t in results:
            if t.layout != torch.strided:
                raise CaptureFailed(f"{func} returns a {t.layout} tensor", op=str(func))
        vids = [self.value_of(t) for t in tensors]
        index = len(self.fallbacks)
        self.fallbacks.append(callable_ or _Fallback(func, targs, tkwargs, keep))
        # A convolution that is not transposed: passes may fold a batch norm into its weights
        conv = func is aten.convolution.default and not _bind(func, args, kwargs)["transposed"]
        traits = _C.FALLBACK_CONVOLUTION if conv else 0
        res = self.builder.add_fallback(index, vids, [self.dtype_name(t.dtype) for t in results],
                                        [list(t.shape) for t in results], [list(t.stride()) for t in results],
                                        str(func), traits)
        for t, vid in zip(results, res):
            self.values[id(t)] = vid
            self._watch(t)

    def _bind_result(self, t, vid):
        self.builder.check(vid, self.dtype_name(t.dtype), list(t.shape))
        strides = list(t.stride())
        old = self.layouts.get(vid)
        if old is not None and _layout_key(t.shape, old) != _layout_key(t.shape, strides):
            # The handler returned a value already recorded with another layout (clone or
            # contiguous() of a transposed value): give this tensor a value of its own, or its
            # layout would overwrite the first one's (an output then came back with the strides
            # of a copy made from it, or contiguous() returned a transposed tensor).
            vid = self.builder.call("copy", [(0, vid)], [], [], "", 0)
        if vid not in self.layouts:
            self.builder.set_layout(vid, strides)
            self.layouts[vid] = strides
        self.values[id(t)] = vid
        self._watch(t)

    def _record_inplace(self, func, args, kwargs, out):
        """Functionalises an in-place op on an intermediate: the tensor's new value is recorded
        as a fresh graph value. Mutating an argument, or a tensor that shares its memory with
        another traced tensor (a view), is not supported yet and stops the capture."""
        a = _bind(func, args, kwargs)
        written = [arg.name for arg in func._schema.arguments if arg.alias_info is not None and arg.alias_info.is_write]
        if len(written) != 1:
            raise CaptureFailed(f"{func} writes {len(written)} tensors", op=str(func))
        target = a[written[0]]
        if not isinstance(target, torch.Tensor):
            raise CaptureFailed(f"{func} writes a {type(target).__name__}", op=str(func))
        self.value_of(target)  # a leaf used for the first time here gets its input
        if id(target) not in self.values:
            raise CaptureFailed(f"{func} writes a tensor kiln did not see made", op=str(func))
        leaf = self.leaf_index.get(id(target))
        chain = self._view_chain(target)  # slice/select views up to the tensor they look into
        root = chain[-1][0] if chain else target
        ptr = target.untyped_storage().data_ptr()
        # Known slice/select views of the same root are refreshed after the write; any other
        # tensor sharing the memory (a view kiln does not track) would go stale.
        allowed = {id(target), id(root)} | {id(b) for b, *_ in chain} | set(self._views_of(root))
        if ptr and any(tid not in allowed and t is not None and t.untyped_storage().data_ptr() == ptr
                       for tid, t in ((tid, r()) for tid, r in self.live.copy().items())):
            # Another traced tensor (a view, or an argument aliasing this one) would have to see
            # the write too; kiln's values are not views, so it stops the capture instead.
            raise CaptureFailed(f"{func} mutates a tensor that shares memory with another "
                                f"(views are not functionalized yet)", op=str(func))
        # An operand that is another view of the written memory (x.sub_(x[:, -1])): eager reads
        # it while writing, in its own iteration order. Only eager reproduces that; an operand
        # that is the very same view (x.add_(x)) reads each element before it is written.
        tptr = target.untyped_storage().data_ptr()
        for name, v in a.items():
            if name == written[0] or not isinstance(v, torch.Tensor) or v.numel() == 0 or target.numel() == 0:
                continue
            if v.untyped_storage().data_ptr() == tptr and tptr and not (
                    v.storage_offset() == target.storage_offset() and v.shape == target.shape
                    and v.stride() == target.stride()) and not self._disjoint_views(v, target):
                raise CaptureFailed(f"{func} reads another view of the tensor it writes (eager's result "
                                    f"depends on its iteration order)", op=str(func))
        if leaf is not None and target.requires_grad:
            raise CaptureFailed(f"{func} mutates a leaf that requires grad", op=str(func))
        if id(root) in self.leaf_index and 0 in root.stride() and root.numel() > 1:
            # writing back into an expanded argument would write one element many times
            raise CaptureFailed(f"{func} writes an expanded (stride-0) tensor", op=str(func))
        name = func.overloadpacket.__name__
        if name == "copy_" and not isinstance(a["src"], torch.Tensor):
            # x.copy_(2.0): the dispatcher hands the Python number through as it is; it is a
            # constant of the code, like fill_'s value.
            vid = self.call("full", [a["src"]], ints=list(target.shape), dtype=self.dtype_name(target.dtype))
        elif name == "copy_":
            vid = self.call("cast", [a["src"]], dtype=self.dtype_name(target.dtype))
            vid = self.call_value("expand", [vid], ints=list(target.shape))
        elif name in ("fill_", "zero_"):
            fill = a.get("value", 0) if name == "fill_" else 0
            vid = self.call("full", [fill], ints=list(target.shape), dtype=self.dtype_name(target.dtype))
            if isinstance(fill, torch.Tensor):
                vid = self.call_value("expand", [self.call("cast", [fill], dtype=self.dtype_name(target.dtype))],
                                      ints=list(target.shape))
        else:
            functional = getattr(aten, name[:-1] if name.endswith("_") else name, None)
            handler = HANDLERS.get(functional)
            args_f = dict(a)
            if written[0] != "self":  # out= variants: the functional op has no `out`
                args_f.pop(written[0])
            self.current_op = getattr(functional, "__name__", name)
            try:
                vid = None if handler is None else handler(self, args_f, target)
            except NoLowering:
                vid = None
            if vid is None:
                self._functional_fallback(func, functional, a, written[0], target)
                self._note_mutation(target, leaf)
                return
            vid = self.call_value("cast", [vid], dtype=self.dtype_name(target.dtype))
            vid = self.call_value("expand", [vid], ints=list(target.shape))
        self._bind_result(target, vid)
        self._note_mutation(target, leaf)
        self._write_through(target, chain)
        if not chain:
            self._refresh_views(target, target)  # views taken earlier see the write

    def _view_chain(self, t):
        """[(base, dim, start, end, step, unsqueezed shape or None)] from `t` up to a tensor that
        is no traced slice/select view; empty when `t` is no such view."""
        chain = []
        while id(t) in self.views:
            base, dim, start, end, step, unsq = self.views[id(t)]
            chain.append((base, dim, start, end, step, unsq))
            t = base
        return chain

    def _disjoint_views(self, a, b):
        """True when traced views `a` and `b` cannot share an element: unit-step slices of one
        tensor along the same dim with ranges that do not meet (two chunks of gru_cell's gates)."""
        ca, cb = self._view_chain(a), self._view_chain(b)
        if not ca or not cb:
            return False
        (ra, da, sa, ea, pa, _), (rb, db, sb, eb, pb, _) = ca[-1], cb[-1]
        if ra is not rb or da != db or pa != 1 or pb != 1:
            return False
        n = ra.shape[da]

        def bound(i):  # torch's slice rules: negative counts from the end, then clamp to [0, n]
            return min(max(i + n if i < 0 else i, 0), n)
        sa, ea, sb, eb = bound(sa), bound(ea), bound(sb), bound(eb)
        return ea <= sb or eb <= sa or ea <= sa or eb <= sb

    def _views_of(self, root):
        """ids of the live tracked slice/select views whose chain ends at `root`."""
        out = []
        for tid in self.views.copy():
            r = self.live.get(tid)
            t = r() if r is not None else None
            if t is not None:
                chain = self._view_chain(t)
                if chain and chain[-1][0] is root:
                    out.append(tid)
        return out

    def _refresh_views(self, root, written):
        """After `root` got a new value, every other live view of it reads its slice again."""
        for tid in self._views_of(root):
            r = self.live.get(tid)
            t = r() if r is not None else None
            if t is None or t is written:
                continue
            value = Value(self.values[id(root)]) if id(root) in self.values else Value(self.value_of(root))
            for base, dim, start, end, step, unsq in reversed(self._view_chain(t)):
                value = Value(self.call("slice", [value], ints=[dim, start, end, step]))
                if unsq is not None:
                    # this link was a select: drop the sliced dim again
                    shape = list(unsq)
                    del shape[dim]
                    value = Value(self.call("reshape", [value], ints=shape))
            self._bind_result(t, value.vid)

    def _write_through(self, view, chain):
        """A write into a slice/select view updates the tensors it looks into: each base gets
        the view's new value scattered into its slice (functionally), up to the root, which may
        be an argument (then written back after the call, like any mutated argument)."""
        value = Value(self.values[id(view)])
        for base, dim, start, end, step, unsq in chain:
            if unsq is not None:
                value = Value(self.call("reshape", [value], ints=unsq))
            self.value_of(base)
            vid = self.call("slice_scatter", [base, value], ints=[dim, start, end, step])
            self._bind_result(base, vid)
            self._note_mutation(base, self.leaf_index.get(id(base)))
            value = Value(vid)
        if chain:
            self._refresh_views(chain[-1][0], view)

    def _note_mutation(self, target, leaf, silent=False):
        """Remembers the new value of a mutated argument/parameter/buffer: it is written back
        into the caller's tensor after each compiled call, as eager's in-place op would.
        `silent`: eager's op writes it without bumping its version counter (batch norm's running
        statistics), so the write-back does not either (a saved tensor stays valid)."""
        if leaf is not None:
            if silent:
                self.silent_updates.add(leaf)
            else:
                self.silent_updates.discard(leaf)
            if self.in_backward:
                raise CaptureFailed("autograd: the backward of the function writes an argument, parameter or "
                                    "buffer in place")
            self.mutations[leaf] = (len(self.segments) - 1, self.values[id(target)], target)

    def _functional_fallback(self, func, functional, a, written, target):
        """An in-place op kiln has no lowering for: its functional form runs eagerly inside the
        program (index_put_ -> index_put, scatter_ -> scatter, ...), and its result becomes the
        tensor's new value."""
        if func.overloadpacket in _RANDOM_FILLS and written == "self":
            rest = [a[arg.name] for arg in func._schema.arguments[1:] if not arg.kwarg_only]
            kw = {arg.name: a[arg.name] for arg in func._schema.arguments if arg.kwarg_only and arg.name in a}
            targs, tkwargs, tensors = _template([None] + rest, kw)
            fill = _FreshFill(func, targs, tkwargs, target.shape, target.stride(), target.dtype, target.device)
            self._record_fallback(func, tuple(rest), kw, target, callable_=fill)
            return self.values[id(target)]
        overload = getattr(functional, func._overloadname, None) if functional is not None else None
        if overload is None and written != "self":
            overload = getattr(functional, "default", None)
        if overload is None or overload._schema.is_mutable:
            raise CaptureFailed(f"kiln has no lowering for {func} and no functional form", op=str(func))
        args, kwargs = [], {}
        for arg in overload._schema.arguments:
            # The functional form takes `self` (index_put_ -> index_put); an out= tensor goes.
            if (arg.name == written and written != "self") or arg.name not in a:
                continue
            if arg.kwarg_only:
                kwargs[arg.name] = a[arg.name]
            else:
                args.append(a[arg.name])
        self._record_fallback(overload, tuple(args), kwargs, target)
        return self.values[id(target)]

    # -- result -----------------------------------------------------------------------------
    def output_value(self, k, vid, tensor):
        """Marks value `vid` of segment k as an output; returns its ('seg', k, vid) source."""
        seg = self.segments[k]
        if vid < 0:  # a shape read's result, as the read returned it
            return ("seg", k, vid)
        if vid in seg.input_vids:
            # A new tensor whose value is an input's (x.clone(), torch.floor of an int tensor,
            # x[:]): give the graph a computed value to output, since an input cannot be a graph
            # output (and eager's result is not the input).
            vid = seg.builder.call("copy", [(0, vid)], [], [], "", 0)
            seg.builder.set_layout(vid, list(tensor.stride()))
        ptr = tensor.untyped_storage().data_ptr()
        if not ptr or all(not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() != ptr for t in self.leaves):
            # eager's result shares no memory with an argument: kiln must not return an alias
            # of one either, though its value may be a view (x.floor() of an integer x is x)
            seg.fresh.add(vid)
        seg.need(vid, tensor)
        seg.flows.add(vid)
        seg.returned.add(vid)
        return ("seg", k, vid)

    def prune_flows(self):
        """Once the result is known: a value carried into later segments flows only where
        autograd reaches it from what those segments pass on (their flowing values). One
        carried only into a segment whose flowing values do not depend on it (its result read
        into Python, unused, or computed from other inputs) gets no gradient in eager. Given a
        zero tangent instead, its backward would turn a NaN or inf it meets (0 * nan) into the
        gradients, where eager's have none (found by kiln.fuzz --train, seed 1502)."""
        for j in range(len(self.segments) - 1, -1, -1):
            seg = self.segments[j]
            carried = [(key, self.segments[key[0]].out_tensors.get(key[1]))
                       for key, readers in self.carried_into.items() if j in readers]
            if not carried:
                continue
            stop = {t.grad_fn for _, t in carried if t is not None and t.grad_fn is not None}
            reached = _autograd_reach([seg.out_tensors[v].grad_fn for v in seg.flows
                                       if seg.out_tensors.get(v) is not None], stop)
            for (k, src), t in carried:
                if t is not None and t.grad_fn is not None and t.grad_fn in reached:
                    continue
                readers = self.carried_into[(k, src)]
                readers.discard(j)
                if not readers and src not in self.segments[k].returned:
                    self.segments[k].flows.discard(src)

    def mutation_outputs(self):
        """(leaf index, source of its new value) for each argument/parameter/buffer mutated."""
        return [(leaf, self.output_value(k, vid, t)) for leaf, (k, vid, t) in sorted(self.mutations.items())]

    def outputs(self, result_leaves, arg_leaf_count):
        """Maps result leaves to ('seg', segment, value id) / ('input', leaf) / ('const', value),
        and marks the values as outputs of their segments."""
        specs = []
        for leaf in result_leaves:
            if isinstance(leaf, torch.Tensor):
                for i in range(arg_leaf_count):
                    if self.leaves[i] is leaf:
                        specs.append(("input", i))
                        break
                else:
                    k = next((k for k in range(len(self.segments) - 1, -1, -1)
                              if id(leaf) in self.segments[k].values), None)
                    if k is None:
                        raise CaptureFailed("the function returns a tensor the tracer did not see made")
                    specs.append(self.output_value(k, self.segments[k].values[id(leaf)], leaf))
            elif leaf is None or type(leaf) in (bool, int, float, str, torch.dtype, torch.device):
                specs.append(("const", leaf))
            else:
                raise CaptureFailed(f"the function returns a {type(leaf).__name__}")
        return specs


def _autograd_reach(roots, stop):
    """The autograd nodes reachable from `roots` (None entries ignored), not walking past the
    nodes in `stop`."""
    seen, stack = set(), [r for r in roots if r is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in stop:
            continue
        stack.extend(n for n, _ in fn.next_functions if n is not None and n not in seen)
    return seen


def _tracked_ints(args):
    """`args` with each plain int positional argument as a SizeInt whose source is its leaf
    index (a value that may follow a dynamic program's symbol: _size_int.py)."""
    out, leaf = [], 0
    for a in args:
        if type(a) is int:
            a = _size_int.SizeInt(a, frozenset((leaf,)))
        out.append(a)
        leaf += _leaf_count(a)
    return tuple(out)


def _leaf_count(obj):
    leaves = []
    flatten(obj, leaves)
    return len(leaves)


def trace(fn, args, kwargs, leaves, candidates, target=None):
    """Runs fn(*args, **kwargs) under the tracer (for `target` "cuda": as a CUDA capture would
    record it, whatever device the tensors are on). Returns (result, tracer)."""
    tracer = Tracer(leaves, candidates, target)
    _size_int._active.append(tracer)
    try:
        with _EscapeWatch(tracer), tracer:
            result = fn(*_tracked_ints(args), **kwargs)
        leaves = []
        spec = flatten(result, leaves)
        plain = [_size_int.plain(v) for v in leaves]
        if any(p is not v for p, v in zip(plain, leaves)):  # the caller gets ints, not SizeInts
            result = unflatten(spec, plain)[0]
    finally:
        _size_int._active.pop()
    if tracer.pending_cut:
        # The function read a value after its last op: the read still decides the result (a
        # returned number, which branch returned what), so the path ends in an empty segment
        # keyed by it.
        tracer.segments.append(_Segment(tracer.default_float))
        tracer.pending_cut = False
    return result, tracer


def _dynamo_only_when_loaded(cls):
    """TorchDispatchMode wraps a subclass's __torch_dispatch__ in torch._disable_dynamo, whose
    first call imports torch._dynamo (~1 s: it would be most of a process's first capture)
    only to keep Dynamo from compiling frames inside the handler. Without Dynamo loaded no frame
    can be compiled, so the handler runs as it is until Dynamo is imported, and disabled for
    Dynamo from then on, as torch would have it."""
    wrapper = cls.__dict__["__torch_dispatch__"]
    raw = getattr(wrapper, "__wrapped__", None)
    if raw is None:  # another torch: nothing to adjust
        return cls
    disabled = []

    def handler(*args, **kwargs):
        if not disabled:
            if "torch._dynamo" not in sys.modules:
                return raw(*args, **kwargs)
            import torch._dynamo
            disabled.append(torch._dynamo.disable(raw, recursive=True, wrapping=False))
        return disabled[0](*args, **kwargs)

    raw.__dynamo_disable = handler  # what torch's wrapper calls (torch/_compile.py)
    return cls


_dynamo_only_when_loaded(Tracer)

# The handlers import this module's names; importing them last breaks the cycle.
from ._handlers import HANDLERS, NoLowering, Value  # noqa: E402
from . import _training_handlers  # noqa: E402,F401  (registers its handlers into HANDLERS)
