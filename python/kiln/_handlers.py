"""The ATen handlers of the tracer: one function per ATen overload packet, mapping the op (its
arguments normalised by schema) to GraphBuilder calls. Ops with no handler run eagerly inside
the compiled program as fallback nodes (see Tracer._record_fallback); a handler raises
NoLowering for a form of its op it does not lower, with the same result.
"""

import functools
import math

import torch

from ._trace import CaptureFailed, _layout_key

aten = torch.ops.aten

HANDLERS = {}


def broadcast_shape(*shapes):
    """torch.broadcast_shapes for concrete sizes (RuntimeError where they do not broadcast):
    torch's own imports torch.fx's symbolic shapes (sympy, ~0.5 s) on its first call, which
    would land in a process's first capture."""
    out = []
    for dims in zip(*(([1] * (max(map(len, shapes)) - len(s))) + list(s) for s in shapes)):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return out


def handles(*packets):
    def register(fn):
        for p in packets:
            HANDLERS[p] = fn
        return fn
    return register


def _simple_binary(name):
    return lambda tr, a, out: tr.call(name, [a["self"], a["other"]])


for _packet, _name in [
    (aten.mul, "mul"), (aten.maximum, "maximum"), (aten.minimum, "minimum"),
    (aten.eq, "eq"), (aten.ne, "ne"), (aten.lt, "lt"), (aten.le, "le"), (aten.gt, "gt"),
    (aten.ge, "ge"), (aten.logical_and, "logical_and"), (aten.logical_or, "logical_or"),
    (aten.logical_xor, "logical_xor"), (aten.bitwise_and, "bitwise_and"),
    (aten.bitwise_or, "bitwise_or"), (aten.bitwise_xor, "bitwise_xor"),
    (aten.floor_divide, "floor_divide"), (aten.fmod, "fmod"), (aten.remainder, "remainder"),
]:
    HANDLERS[_packet] = _simple_binary(_name)

for _packet, _name in [
    (aten.neg, "neg"), (aten.abs, "abs"), (aten.exp, "exp"), (aten.exp2, "exp2"),
    (aten.expm1, "expm1"), (aten.log, "log"), (aten.log2, "log2"), (aten.log1p, "log1p"),
    (aten.sqrt, "sqrt"), (aten.rsqrt, "rsqrt"), (aten.reciprocal, "reciprocal"), (aten.sin, "sin"),
    (aten.cos, "cos"), (aten.tan, "tan"), (aten.tanh, "tanh"), (aten.erf, "erf"),
    (aten.sigmoid, "sigmoid"), (aten.floor, "floor"), (aten.ceil, "ceil"), (aten.trunc, "trunc"),
    (aten.sign, "sign"), (aten.logical_not, "logical_not"), (aten.bitwise_not, "bitwise_not"),
    (aten.isnan, "isnan"), (aten.relu, "relu"), (aten.silu, "silu"), (aten.mish, "mish"),
    (aten.hardswish, "hardswish"), (aten.hardsigmoid, "hardsigmoid"),
]:
    HANDLERS[_packet] = (lambda n: lambda tr, a, out: tr.call(n, [a["self"]]))(_name)


class NoLowering(Exception):
    """Raised by a handler for a form of its op kiln does not lower: the op then runs eagerly
    inside the program as a fallback node (anything the handler recorded is dead and dropped)."""


class Value:
    """A value id already recorded, passed where `Tracer.call` takes operands (a bare int
    would be read as a Python number)."""
    __slots__ = ("vid",)

    def __init__(self, vid):
        self.vid = vid


@handles(aten.add, aten.sub)
def _add_sub(tr, a, out, func_name=None):
    other, alpha = a["other"], a.get("alpha", 1)
    if alpha is not None and alpha != 1:
        # torch computes self + alpha * other in the result dtype (no overflow in a narrower one)
        dt = tr.dtype_name(out.dtype)
        if out.dtype == torch.bool:  # bool arithmetic: alpha * b is b when alpha is true
            return tr.call(tr.current_op, [a["self"], other if alpha else False])
        if isinstance(other, torch.Tensor):
            other = Value(tr.call("mul", [Value(tr.call("cast", [other], dtype=dt)), alpha]))
        else:
            other = other * alpha
        return tr.call(tr.current_op, [Value(tr.call("cast", [a["self"]], dtype=dt)), other])
    return tr.call(tr.current_op, [a["self"], other])


@handles(aten.rsub)
def _rsub(tr, a, out):
    x, alpha = a["self"], a.get("alpha", 1)
    if alpha is not None and alpha != 1:
        dt = tr.dtype_name(out.dtype)  # in the result dtype, as torch computes it
        x = Value(tr.call("mul", [Value(tr.call("cast", [x], dtype=dt)), alpha]))
    return tr.call("sub", [a["other"], x])


@handles(aten.div)
def _div(tr, a, out):
    mode = a.get("rounding_mode")
    name = {None: "div", "trunc": "trunc_divide", "floor": "floor_divide"}[mode]
    return tr.call(name, [a["self"], a["other"]])


@handles(aten.pow)
def _pow(tr, a, out):
    return tr.call("pow", [a["self"], a["exponent"]])


@handles(aten.sgn)
def _sgn(tr, a, out):
    """sgn is sign for real tensors (abs's backward reads it)."""
    if a["self"].is_complex():
        raise NoLowering()
    return tr.call("sign", [a["self"]])


@handles(aten.isinf, aten.isfinite, aten.isposinf, aten.isneginf)
def _isinf(tr, a, out):
    """A comparison with inf (capture/pointwise_ops.cpp); integers are finite."""
    if a["self"].is_complex():
        raise NoLowering()
    return tr.call(tr.current_op, [a["self"]])


@handles(aten.lerp)
def _lerp(tr, a, out):
    """lerp.Scalar / lerp.Tensor (Note [lerp] in capture/pointwise_ops.cpp)."""
    x, end, w = a["self"], a["end"], a["weight"]
    if not out.dtype.is_floating_point or x.dtype != out.dtype or end.dtype != out.dtype:
        raise NoLowering()
    if isinstance(w, torch.Tensor):
        if w.dtype != out.dtype:
            raise NoLowering()
    elif isinstance(w, (int, float)) and not isinstance(w, bool):
        w = float(w)
    else:
        raise NoLowering()
    return tr.call("lerp", [x, end, w])


@handles(aten.addcmul, aten.addcdiv)
def _addcmul(tr, a, out):
    """self + value * tensor1 * tensor2 (or / tensor2), in eager's order (capture/pointwise_ops.cpp)."""
    value = a.get("value", 1)
    if (out.dtype == torch.bool or out.dtype.is_complex or isinstance(value, (bool, complex))
            or (tr.current_op == "addcdiv" and not out.dtype.is_floating_point)
            or (isinstance(value, float) and not out.dtype.is_floating_point)):
        raise NoLowering()
    return tr.call(tr.current_op, [a["self"], a["tensor1"], a["tensor2"], value])


@handles(aten.linspace)
def _linspace(tr, a, out):
    """linspace with Python-number ends (capture/pointwise_ops.cpp follows eager's CPU kernel)."""
    start, end = a.get("start"), a.get("end")
    if (tr.func._overloadname != "default" or out.device.type != "cpu" or out.dim() != 1
            or out.dtype not in (torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32,
                                 torch.int64)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end))):
        raise NoLowering()  # CUDA's kernel has its own formula; half types step in half arithmetic
    return tr.call("linspace", [], ints=[a["steps"]], floats=[float(start), float(end)], dtype=tr.dtype_name(out.dtype))


@handles(aten.round)
def _round(tr, a, out):
    if a.get("decimals", 0) not in (0, None):
        raise NoLowering()
    return tr.call("round", [a["self"]])


@handles(aten.where)
def _where(tr, a, out):
    return tr.call("where", [a["condition"], a["self"], a["other"]])


def _clamp_call(tr, x, lo, hi):
    return tr.call("clamp", [x, 0 if lo is None else lo, 0 if hi is None else hi],
                   ints=[lo is not None, hi is not None])


@handles(aten.clamp)
def _clamp(tr, a, out):
    return _clamp_call(tr, a["self"], a.get("min"), a.get("max"))


@handles(aten.clamp_min)
def _clamp_min(tr, a, out):
    return _clamp_call(tr, a["self"], a["min"], None)


@handles(aten.clamp_max)
def _clamp_max(tr, a, out):
    return _clamp_call(tr, a["self"], None, a["max"])


@handles(aten.hardtanh)
def _hardtanh(tr, a, out):
    lo, hi = a["min_val"], a["max_val"]
    if not a["self"].dtype.is_floating_point:
        # hardtanh keeps an integer input's dtype: torch truncates the bounds to integers
        # (clamp would promote to float with float bounds).
        lo, hi = int(lo), int(hi)
    return _clamp_call(tr, a["self"], lo, hi)


@handles(aten.leaky_relu)
def _leaky_relu(tr, a, out):
    return tr.call("leaky_relu", [a["self"]], floats=[float(a["negative_slope"])])


@handles(aten.elu)
def _elu(tr, a, out):
    return tr.call("elu", [a["self"]], floats=[float(a["alpha"]), float(a["scale"]), float(a["input_scale"])])


@handles(aten.gelu)
def _gelu(tr, a, out):
    return tr.call("gelu_tanh" if a.get("approximate") == "tanh" else "gelu", [a["self"]])


@handles(aten.softplus)
def _softplus(tr, a, out):
    return tr.call("softplus", [a["self"]], floats=[float(a["beta"]), float(a["threshold"])])


@handles(aten._to_copy)
def _to_copy(tr, a, out):
    x = a["self"]
    if out.device != x.device:
        raise CaptureFailed(f"a copy from {x.device} to {out.device} is not lowered", op="aten._to_copy")
    if out.dtype == x.dtype:
        return tr.call("identity", [x])
    return tr.call("cast", [x], dtype=tr.dtype_name(out.dtype))


@handles(aten.lift_fresh)
def _lift_fresh(tr, a, out):
    x = a["self"]
    known = id(x) in tr.values or id(x) in tr.leaf_index or id(x) in tr.candidates
    if not known and x.dim() == 0:
        # A Python number wrapped into a tensor (x[i] = 7.0, torch.tensor(2.5)): a constant, as a
        # number passed to any op is. (Larger tensors made from Python data may come from mutable
        # state such as numpy arrays, which no guard covers: those stop the capture.)
        return tr.call("full", [x.item()], ints=[], dtype=tr.dtype_name(x.dtype))
    if not known and tr.literal_depth and x.device.type == "cpu":
        # torch.tensor([1.0, 2.0]) of Python numbers (checked where torch.tensor was called):
        # constants too, element by element.
        dt = tr.dtype_name(x.dtype)
        flat = x.reshape(-1).tolist()
        if not flat:
            return tr.call("full", [0], ints=list(x.shape), dtype=dt)
        parts = [Value(tr.call("full", [v], ints=[1], dtype=dt)) for v in flat]
        vec = parts[0].vid if len(parts) == 1 else tr.call("concat", parts, ints=[0])
        return tr.call("reshape", [Value(vec)], ints=list(x.shape))
    return tr.call("identity", [x])


@handles(aten.clone, aten.alias, aten.detach, aten.contiguous)
def _identity(tr, a, out):
    x = a["self"]
    if tr.current_op in ("alias", "detach") and x.dim() > 0:
        # A view of all of x (`x[:, :n]` of an n-wide x is an alias): tracked as a full slice, so
        # an in-place op on it writes through to x as a slice's would.
        tr.views[id(out)] = (x, 0, 0, INT64_MAX, 1, None)
    return tr.call("identity", [x])


@handles(aten.as_strided)
def _as_strided(tr, a, out):
    # Only the restride that changes nothing but the strides of size-1 dims (adaptive_avg_pool2d
    # on a channels-last tensor ends with one): every element stays where it was.
    x = a["self"]
    vid = tr.value_of(x)
    before = tr.layouts.get(vid, list(x.stride()))
    offset = a.get("storage_offset")
    if (list(a["size"]) != list(x.shape) or (offset is not None and offset != x.storage_offset())
            or _layout_key(x.shape, a["stride"]) != _layout_key(x.shape, before)):
        raise NoLowering()
    return tr.call("identity", [x])


@handles(aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias, aten.unsqueeze,
         aten.squeeze, aten.flatten, aten.unflatten, aten.view_as, aten.reshape_as)
def _reshape(tr, a, out):
    return tr.call("reshape", [a["self"]], ints=list(out.shape))


@handles(aten.expand, aten.expand_as)
def _expand(tr, a, out):
    return tr.call("expand", [a["self"]], ints=list(out.shape))


@handles(aten.permute)
def _permute(tr, a, out):
    return tr.call("permute", [a["self"]], ints=list(a["dims"]))


@handles(aten.t, aten.numpy_T)
def _t(tr, a, out):
    x = a["self"]
    if x.dim() < 2:
        return tr.call("identity", [x])
    return tr.call("permute", [x], ints=list(range(x.dim()))[::-1])


@handles(aten.transpose)
def _transpose(tr, a, out):
    x = a["self"]
    n = max(x.dim(), 1)
    perm = list(range(x.dim()))
    d0, d1 = a["dim0"] % n, a["dim1"] % n
    if x.dim() == 0:
        return tr.call("identity", [x])
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return tr.call("permute", [x], ints=perm)


INT64_MAX = 2**63 - 1


@handles(aten.slice)
def _slice(tr, a, out):
    start = a["start"] if a["start"] is not None else 0
    end = a["end"] if a["end"] is not None else INT64_MAX
    tr.views[id(out)] = (a["self"], a["dim"], start, min(end, INT64_MAX), a["step"], None)
    return tr.call("slice", [a["self"]], ints=[a["dim"], start, min(end, INT64_MAX), a["step"]])


@handles(aten.select)
def _select(tr, a, out):
    x, dim, index = a["self"], a["dim"], a["index"]
    size = x.shape[dim]
    if index < 0:
        index += size
    s = tr.call("slice", [x], ints=[dim, index, index + 1, 1])
    sliced = list(x.shape)
    sliced[dim] = 1
    tr.views[id(out)] = (x, dim, index, index + 1, 1, sliced)
    return tr.call_value("reshape", [s], ints=list(out.shape))


@handles(aten.slice_scatter)
def _slice_scatter(tr, a, out):
    start = a["start"] if a["start"] is not None else 0
    end = a["end"] if a["end"] is not None else INT64_MAX
    return tr.call("slice_scatter", [a["self"], a["src"]], ints=[a["dim"], start, min(end, INT64_MAX), a["step"]])


@handles(aten.select_scatter)
def _select_scatter(tr, a, out):
    """base with base.select(dim, index) replaced by src (cast to base's dtype): a one-wide
    slice_scatter of src with dim put back."""
    x, src, dim, index = a["self"], a["src"], a["dim"] % max(a["self"].dim(), 1), a["index"]
    if x.dim() == 0 or not isinstance(src, torch.Tensor) or tuple(src.shape) != tuple(out.select(dim, 0).shape):
        raise NoLowering()  # (src is copied into base's dtype, as eager's copy_ does)
    if index < 0:
        index += x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 1
    s = tr.call("reshape", [src], ints=shape)
    return tr.call("slice_scatter", [x, Value(s)], ints=[dim, index, index + 1, 1])


@handles(aten.scalar_tensor)
def _scalar_tensor(tr, a, out):
    return tr.call("full", [a["s"]], ints=[], dtype=tr.dtype_name(out.dtype))


@handles(aten.full, aten.full_like)
def _full(tr, a, out):
    return tr.call("full", [a["fill_value"]], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))


@handles(aten.zeros, aten.zeros_like)
def _zeros(tr, a, out):
    return tr.call("full", [0], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))


@handles(aten.ones, aten.ones_like)
def _ones(tr, a, out):
    return tr.call("full", [1], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))


def _dims(d):
    if d is None:
        return []
    if isinstance(d, int):
        return [d]
    return list(d)


def _reduce(name):
    def h(tr, a, out):
        dtype = a.get("dtype")
        extra = dict(floats=[1.0], dtype=tr.dtype_name(dtype)) if dtype is not None else {}
        return tr.call(name, [a["self"]], ints=_dims(a.get("dim")), int_value=int(bool(a.get("keepdim", False))),
                       **extra)
    return h


for _packet, _name in [(aten.sum, "sum"), (aten.prod, "prod"), (aten.amax, "amax"), (aten.amin, "amin"),
                       (aten.argmax, "argmax"), (aten.argmin, "argmin"), (aten.any, "any"), (aten.all, "all"),
                       (aten.mean, "mean"), (aten.logsumexp, "logsumexp")]:
    HANDLERS[_packet] = _reduce(_name)


@handles(aten.max, aten.min)
def _max_min(tr, a, out):
    if "other" in a:  # max(a, b) is maximum(a, b)
        return tr.call("maximum" if tr.current_op == "max" else "minimum", [a["self"], a["other"]])
    values = "amax" if tr.current_op == "max" else "amin"
    if "dim" not in a:  # full reduction: a 0-dim tensor
        return tr.call(values, [a["self"]])
    dims, keep = [a["dim"]], int(bool(a["keepdim"]))
    return [tr.call(values, [a["self"]], ints=dims, int_value=keep),
            tr.call("argmax" if tr.current_op == "max" else "argmin", [a["self"]], ints=dims, int_value=keep)]


@handles(aten.aminmax)
def _aminmax(tr, a, out):
    """(amin, amax) over one dim or the whole tensor: two reductions (sharing one pass over x
    when fused)."""
    x, dim, keep = a["self"], a.get("dim"), int(bool(a.get("keepdim", False)))
    if x.numel() == 0 or x.dim() == 0 and dim is not None:
        raise NoLowering()
    dims = [] if dim is None else [dim]
    return [tr.call("amin", [x], ints=dims, int_value=keep), tr.call("amax", [x], ints=dims, int_value=keep)]


@handles(aten.var, aten.std)
def _var_std(tr, a, out):
    corr = a.get("correction")
    if corr is None:
        corr = 1 if a.get("unbiased", True) else 0
    return tr.call(tr.current_op, [a["self"]], ints=_dims(a.get("dim")), int_value=int(bool(a.get("keepdim"))),
                   floats=[float(corr)])


@handles(aten.linalg_vector_norm)
def _norm(tr, a, out):
    if a.get("dtype") is not None:
        raise CaptureFailed("vector_norm with dtype is not lowered", op="aten.linalg_vector_norm")
    return tr.call("norm", [a["self"]], ints=_dims(a.get("dim")), int_value=int(bool(a.get("keepdim"))),
                   floats=[float(a["ord"])])


@handles(aten._softmax, aten._log_softmax)
def _softmax(tr, a, out):
    if a.get("half_to_float"):
        raise CaptureFailed("softmax with half_to_float is not lowered", op=f"aten.{tr.current_op}")
    return tr.call(tr.current_op.lstrip("_"), [a["self"]], ints=[a["dim"]])


def _optional(x):
    return (x, 1) if x is not None else (0, 0)


@handles(aten.native_layer_norm)
def _layer_norm(tr, a, out):
    """y, and the mean and rstd a backward reads (unread, they are dead code and never computed;
    read, they share y's pass over each row: ops.def's layer_norm_mean)."""
    x, k, eps = a["input"], len(a["normalized_shape"]), float(a["eps"])
    w, hw = _optional(a["weight"])
    b, hb = _optional(a["bias"])
    y = tr.call("layer_norm", [x, w, b], ints=[k, hw, hb], floats=[eps])
    if math.prod(a["normalized_shape"]) == 0:
        # eager's statistics of empty rows: mean 0, rstd nan (a training step's backward reads them)
        dt = tr.dtype_name(out[1].dtype)
        return [y, tr.call("full", [0.0], ints=list(out[1].shape), dtype=dt),
                tr.call("full", [float("nan")], ints=list(out[2].shape), dtype=dt)]
    # CUDA keeps a half input's statistics in float32 (the CPU in the input's dtype).
    xs = x if out[1].dtype == x.dtype else Value(tr.call("cast", [x], dtype=tr.dtype_name(out[1].dtype)))
    return [y, tr.call("layer_norm_mean", [xs], ints=[k]), tr.call("layer_norm_rstd", [xs], ints=[k], floats=[eps])]


@handles(aten.native_group_norm)
def _group_norm(tr, a, out):
    w, hw = _optional(a["weight"])
    b, hb = _optional(a["bias"])
    y = tr.call("group_norm", [a["input"], w, b], ints=[a["group"], hw, hb], floats=[float(a["eps"])])
    # The per-group mean and rstd ([N, group]) a training step's backward reads: a layer norm's
    # statistics over each group's elements (dead code, never computed, when nothing reads them).
    x, n, g = a["input"], a["N"], a["group"]
    if x.numel() == 0 or out[1].dtype != x.dtype:
        return [y, None, None]
    rows = Value(tr.call("reshape", [x], ints=[n, g, x.numel() // max(n * g, 1)]))
    mean = tr.call("layer_norm_mean", [rows], ints=[1])
    rstd = tr.call("layer_norm_rstd", [rows], ints=[1], floats=[float(a["eps"])])
    return [y, tr.call_value("reshape", [mean], ints=[n, g]), tr.call_value("reshape", [rstd], ints=[n, g])]


@handles(aten.native_batch_norm, aten._native_batch_norm_legit_no_training)
def _batch_norm(tr, a, out):
    if a.get("training"):
        raise CaptureFailed("batch_norm in training mode (updates running stats) is not lowered",
                            op="aten.native_batch_norm")
    if a["running_mean"] is None or a["running_var"] is None:
        raise CaptureFailed("batch_norm without running stats is not lowered", op="aten.native_batch_norm")
    w, hw = _optional(a["weight"])
    b, hb = _optional(a["bias"])
    y = tr.call("batch_norm_eval", [a["input"], w, b, a["running_mean"], a["running_var"]], ints=[hw, hb],
                floats=[float(a["eps"])])
    # Eval mode saves no statistics: eager returns two empty tensors, which a training step's
    # backward (fine-tuning with frozen batch norm) is handed; recorded so that it can read them.
    dt = tr.dtype_name(out[1].dtype)
    return [y] + [tr.call("full", [0.0], ints=[0], dtype=dt) if t.numel() == 0 and t.dim() == 1 else None
                  for t in out[1:]]


@handles(aten.cudnn_batch_norm, aten.miopen_batch_norm)
def _gpu_batch_norm(tr, a, out):
    # What F.batch_norm dispatches to on CUDA; the same eval-mode normalisation.
    if a.get("training"):
        raise NoLowering()
    w, hw = _optional(a["weight"])
    b, hb = _optional(a["bias"])
    y = tr.call("batch_norm_eval", [a["input"], w, b, a["running_mean"], a["running_var"]], ints=[hw, hb],
                floats=[float(a["epsilon"])])
    return [y] + [None] * (len(out) - 1)


@handles(aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided)
def _empty(tr, a, out):
    # The contents of an empty tensor are unspecified; zeros are one valid choice.
    return tr.call("full", [0], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))


@handles(aten.new_zeros, aten.new_ones, aten.new_full)
def _new_full(tr, a, out):
    fill = {"new_zeros": 0, "new_ones": 1}.get(tr.current_op, a.get("fill_value"))
    return tr.call("full", [fill], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))


# ---- assembly and indexing ----------------------------------------------------------------------
@handles(aten.cat)
def _cat(tr, a, out):
    tensors = [t for t in a["tensors"] if not (t.dim() == 1 and t.shape[0] == 0)]  # legacy empty rule
    if not tensors:
        return tr.call("full", [0], ints=list(out.shape), dtype=tr.dtype_name(out.dtype))
    return tr.call("concat", tensors, ints=[a["dim"]])


@handles(aten.stack)
def _stack(tr, a, out):
    dim = a["dim"] % out.dim()
    parts = []
    for t in a["tensors"]:
        shape = list(t.shape)
        shape.insert(dim, 1)
        parts.append(Value(tr.call("reshape", [t], ints=shape)))
    return tr.call("concat", parts, ints=[dim])


@handles(aten.split, aten.split_with_sizes, aten.unbind, aten.chunk, aten.unsafe_split, aten.unsafe_split_with_sizes,
         aten.unsafe_chunk)
def _split(tr, a, out):
    x, dim = a["self"], a.get("dim", 0)
    dim %= max(x.dim(), 1)
    if x.dim() and tr.current_op != "unbind":
        # The pieces' lengths are a rule of the dim's size (chunk(2) of 3 rows is 2 + 1, of 4
        # rows 2 + 2) that two captures cannot tell from an affine one.
        tr.builder.note_size_rule(x.shape[dim], out[0].shape[dim] if out else 0)
    vids, start = [], 0
    for piece in out:
        n = piece.shape[dim] if tr.current_op != "unbind" else 1
        s = tr.call("slice", [x], ints=[dim, start, start + n, 1])
        # Each piece is a view of x, as a slice (a select for unbind) is: an in-place op on it
        # (gru_cell's `r.sigmoid_()` on a chunk of the gates) writes through to x.
        sliced = list(x.shape)
        sliced[dim] = n
        tr.views[id(piece)] = (x, dim, start, start + n, 1, sliced if tr.current_op == "unbind" else None)
        vids.append(tr.call_value("reshape", [s], ints=list(piece.shape)))
        start += n
    return vids


# Devices with a backend that lowers scatters and scans (both code generators do).
_DEVICES = ("cpu", "cuda")

# How a scatter's source element meets the one it lands on (ir::ScatterCombine).
_SCATTER_COMBINE = {None: 0, "add": 1, "sum": 1, "multiply": 2, "prod": 2, "amax": 3, "amin": 4}


def _scatter_call(tr, op, x, index, src, dim, reduce=None):
    """A scatter (Note [Scatters] in lower_to_loops.cpp): on the CPU the lowering writes an
    argument's update in place (a StaticCache, `out.scatter_add_`); on CUDA a folding scatter's
    updates are atomic (Note [CUDA folding scatters] in codegen_cuda/cuda_source.cpp)."""
    combine = _SCATTER_COMBINE.get(reduce)
    if combine is None or x.device.type not in _DEVICES or x.dim() == 0 or index.dtype != torch.int64:
        raise NoLowering()
    if combine and x.dtype == torch.bool:
        raise NoLowering()  # bool add/multiply are or/and: not the combines lowered
    if isinstance(src, torch.Tensor) and (src.dim() != x.dim() or src.dtype != x.dtype):
        raise NoLowering()
    return tr.call(op, [x, index, src], ints=[dim % x.dim(), combine])


@handles(aten.index_copy)
def _index_copy(tr, a, out):
    if a["index"].dim() != 1:
        raise NoLowering()
    return _scatter_call(tr, "index_copy", a["self"], a["index"], a["source"], a["dim"])


@handles(aten.index_add)
def _index_add(tr, a, out):
    x, index, src, alpha = a["self"], a["index"], a["source"], a.get("alpha", 1)
    if index.dim() != 1 or src.dim() != x.dim() or src.dtype != x.dtype or x.dtype == torch.bool:
        raise NoLowering()
    if alpha != 1:  # self + alpha * source, in self's dtype
        src = Value(tr.call("cast", [Value(tr.call("mul", [src, alpha]))], dtype=tr.dtype_name(x.dtype)))
    return _scatter_call(tr, "index_copy", x, index, src, a["dim"], "add")


@handles(aten.scatter, aten.scatter_add)
def _scatter(tr, a, out):
    src = a["src"] if "src" in a else a["value"]
    reduce = "add" if tr.current_op == "scatter_add" else a.get("reduce")
    if reduce is not None and reduce not in ("add", "multiply"):
        raise NoLowering()
    return _scatter_call(tr, "scatter", a["self"], a["index"], src, a["dim"], reduce)


@handles(aten.scatter_reduce)
def _scatter_reduce(tr, a, out):
    if not a.get("include_self", True) or a["reduce"] == "mean":
        raise NoLowering()  # combines that need the count (mean) or ignore the old value
    return _scatter_call(tr, "scatter", a["self"], a["index"], a["src"], a["dim"], a["reduce"])


@handles(aten.cumsum, aten.cumprod)
def _scan(tr, a, out):
    """cumsum/cumprod (Note [Scans] in lower_to_loops.cpp; on CUDA, Note [CUDA scans] in
    codegen_cuda/cuda_source.cpp)."""
    x = a["self"]
    if x.device.type not in _DEVICES or x.dim() == 0:
        raise NoLowering()
    combine = _SCATTER_COMBINE["sum" if tr.current_op == "cumsum" else "prod"]
    return tr.call("scan", [x], ints=[a["dim"] % x.dim(), combine], dtype=tr.dtype_name(out.dtype))


@handles(aten.index_put)
def _index_put(tr, a, out):
    """x[mask] = v with one boolean mask over x's leading dims and a value that is the same for
    every selected element (a number, a one-element tensor, or one row of x's trailing dims):
    where(mask, v, x), with no data-dependent shape. Values per selected element (their order is
    the mask's) and accumulate=True with a mask run eagerly. Integer index tensors:
    _index_put_integer."""
    x, indices, v = a["self"], list(a["indices"]), a["values"]
    if any(i is not None and i.dtype != torch.bool for i in indices):
        return _index_put_integer(tr, x, indices, v, bool(a.get("accumulate")))
    if a.get("accumulate") or len(indices) != 1 or indices[0] is None or indices[0].dtype != torch.bool:
        raise NoLowering()
    m = indices[0]
    k = m.dim()
    trailing = list(x.shape[k:])
    if k == 0 or tuple(m.shape) != tuple(x.shape[:k]) or v.dtype != x.dtype:
        raise NoLowering()
    if v.numel() == 1:
        value = Value(tr.call("reshape", [v], ints=[]))
    elif list(v.shape) == trailing or list(v.shape) == [1] + trailing:
        value = Value(tr.call("reshape", [v], ints=trailing))
    else:
        raise NoLowering()
    mask = Value(tr.call("reshape", [m], ints=list(m.shape) + [1] * len(trailing)))
    return tr.call("where", [mask, value, x])


def _index_put_integer(tr, x, indices, v, accumulate):
    """x[.., i0, i1, ..] = v (or +=, accumulate) with integer index tensors on adjacent dims:
    capture/index_ops.cpp scatters v through index_copy. Indexed dims apart (torch moves
    them to the front), boolean masks among them, and devices without scatters stay eager."""
    while indices and indices[-1] is None:
        indices.pop()
    first = next(d for d, i in enumerate(indices) if i is not None)
    index_tensors = indices[first:]
    if (any(i is None or i.dtype not in (torch.int64, torch.int32) for i in index_tensors)
            or x.device.type not in _DEVICES or v.dtype != x.dtype or (accumulate and x.dtype == torch.bool)):
        raise NoLowering()
    return tr.call("index_put", [x, v] + index_tensors, ints=[first, int(accumulate)])


@handles(aten.index_select)
def _index_select(tr, a, out):
    x, dim, index = a["self"], a["dim"] % max(a["self"].dim(), 1), a["index"]
    shape = [1] * x.dim()
    shape[dim] = index.numel()
    idx = tr.call("reshape", [index], ints=shape)
    idx = tr.call_value("expand", [idx], ints=list(out.shape))
    return tr.call("gather", [x, Value(idx)], ints=[dim, 0])


@handles(aten.gather)
def _gather(tr, a, out):
    return tr.call("gather", [a["self"], a["index"]], ints=[a["dim"], 0])


@handles(aten.embedding)
def _embedding(tr, a, out):
    w, ids = a["weight"], a["indices"]
    flat = tr.call("reshape", [ids], ints=[ids.numel(), 1])
    idx = tr.call_value("expand", [flat], ints=[ids.numel(), w.shape[1]])
    rows = tr.call("gather", [w, Value(idx)], ints=[0, 0])
    return tr.call_value("reshape", [rows], ints=list(out.shape))


@handles(aten.index)
def _index(tr, a, out):
    indices = list(a["indices"])
    x = a["self"]
    while indices and indices[-1] is None:
        indices.pop()
    first = next((d for d, i in enumerate(indices) if i is not None), None)
    if first is None or any(i is None for i in indices[first:]):
        raise NoLowering()  # indexed dims apart (x[i, :, j]): torch moves them to the front
    if any(i.dtype not in (torch.int64, torch.int32) for i in indices[first:]):
        raise NoLowering()  # boolean masks: a data-dependent shape
    index_tensors = indices[first:]
    if len(index_tensors) == 1 and index_tensors[0].dim() == 1:
        # x[.., i]: a gather along that dim (it wraps negative indices, flags those out of range)
        index = index_tensors[0]
        shape = [1] * x.dim()
        shape[first] = index.numel()
        idx = tr.call("reshape", [index], ints=shape)
        idx = tr.call_value("expand", [idx], ints=list(out.shape))
        return tr.call("gather", [x, Value(idx)], ints=[first, 1])
    return _advanced_index(tr, x, first, index_tensors, out)


def _advanced_index(tr, x, first, index_tensors, out):
    """x[.., i0, i1, ..] with adjacent integer index tensors (broadcast together): the indexed
    dims of x become one, the indices one position into it (each wrapped if negative), and a
    gather along that dim reads it. An index out of its own dim's range makes the position
    invalid, so the gather flags it (and eager raises its IndexError), never another element."""
    sizes = [x.shape[first + k] for k in range(len(index_tensors))]
    bshape = broadcast_shape(*[t.shape for t in index_tensors])
    rest = list(x.shape[first + len(sizes):])
    lead = list(x.shape[:first])
    flat_n = math.prod(bshape)
    position = None
    bad = None
    for t, n in zip(index_tensors, sizes):
        i = tr.call("cast", [t], dtype="int64")
        i = tr.call("where", [Value(tr.call("lt", [Value(i), 0])), Value(tr.call("add", [Value(i), n])), Value(i)])
        out_of_range = tr.call("logical_or", [Value(tr.call("lt", [Value(i), 0])), Value(tr.call("ge", [Value(i), n]))])
        bad = out_of_range if bad is None else tr.call("logical_or", [Value(bad), Value(out_of_range)])
        position = i if position is None else tr.call("add", [Value(tr.call("mul", [Value(position), n])), Value(i)])
    position = tr.call("where", [Value(bad), -(1 << 62), Value(position)])
    position = tr.call_value("expand", [position], ints=bshape)
    xr = tr.call("reshape", [x], ints=lead + [math.prod(sizes)] + rest)
    idx = tr.call_value("reshape", [position], ints=[1] * len(lead) + [flat_n] + [1] * len(rest))
    idx = tr.call_value("expand", [idx], ints=lead + [flat_n] + rest)
    got = tr.call("gather", [Value(xr), Value(idx)], ints=[first, 0])
    return tr.call_value("reshape", [got], ints=list(out.shape))


@handles(aten.masked_fill)
def _masked_fill(tr, a, out):
    return tr.call("where", [a["mask"], a["value"], a["self"]])


@handles(aten.tril, aten.triu)
def _tril(tr, a, out):
    x, k = a["self"], a.get("diagonal", 0)
    shape = list(x.shape)
    row = Value(tr.call("iota", [], ints=shape + [x.dim() - 2], dtype="int64"))
    col = Value(tr.call("iota", [], ints=shape + [x.dim() - 1], dtype="int64"))
    diff = Value(tr.call("sub", [col, row]))
    keep = tr.call("le" if tr.current_op == "tril" else "ge", [diff, k])
    return tr.call("where", [Value(keep), x, False if x.dtype == torch.bool else 0])


@handles(aten.arange)
def _arange(tr, a, out):
    start, step = a.get("start", 0), a.get("step", 1)
    n = out.shape[0]
    if step not in (1, -1):
        tr.builder.note_size_rule(int(a.get("end", n)), n)  # ceil((end - start) / step): not affine in end
    dt = tr.dtype_name(out.dtype)
    iota = Value(tr.call("iota", [], ints=[n, 0], dtype="int64" if not out.dtype.is_floating_point else "float64"))
    v = tr.call("add", [Value(tr.call("mul", [iota, step])), start])
    return tr.call("cast", [Value(v)], dtype=dt)


# ---- pooling and upsampling (capture/window_ops.h: windows picked by index arithmetic) --------
def _per_dim(v, n, default=None):
    """An int or int list of ATen's pooling arguments as n values (one value stands for all;
    an empty list takes `default`, as stride=[] means the kernel size)."""
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return list(default)
    v = [v] if isinstance(v, int) else list(v)
    return v * n if len(v) == 1 else v


def _poolable(x, out, n):
    return (x.dtype.is_floating_point and x.dim() in (n + 1, n + 2) and x.numel() > 0 and out.numel() > 0)


@handles(aten.max_pool2d_with_indices, aten.max_pool3d_with_indices)
def _max_pool(tr, a, out):
    n = 2 if tr.current_op == "max_pool2d_with_indices" else 3
    x = a["self"]
    if not _poolable(x, out[0], n):
        raise NoLowering()
    k = _per_dim(a["kernel_size"], n)
    window = k + _per_dim(a.get("stride"), n, k) + _per_dim(a.get("padding", 0), n) + _per_dim(a.get("dilation", 1), n)
    ints = [n] + window + [int(bool(a.get("ceil_mode"))), 0, 0]
    # The indices are recorded too (max_pool1d squeezes them even when nobody asked for them);
    # unread, they are dead code and never computed.
    return [tr.call("max_pool", [x], ints=ints), tr.call("max_pool_indices", [x], ints=ints)]


@handles(aten.avg_pool2d, aten.avg_pool3d)
def _avg_pool(tr, a, out):
    n = 2 if tr.current_op == "avg_pool2d" else 3
    x = a["self"]
    if not _poolable(x, out, n):
        raise NoLowering()
    k = _per_dim(a["kernel_size"], n)
    window = k + _per_dim(a.get("stride"), n, k) + _per_dim(a.get("padding", 0), n) + [1] * n
    divisor = a.get("divisor_override") or 0
    return tr.call("avg_pool", [x], ints=[n] + window + [int(bool(a.get("ceil_mode"))),
                                                       int(bool(a.get("count_include_pad", True))), divisor])


@handles(aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d)
def _adaptive_avg_pool(tr, a, out):
    x, sizes = a["self"], list(out.shape[-len(a["output_size"]):])
    n = len(sizes)
    if not _poolable(x, out, n):
        raise NoLowering()
    # (windows of different sizes: Note [Adaptive windows] in capture/window_ops.cpp)
    return tr.call("adaptive_avg_pool", [x], ints=sizes)


@handles(aten.adaptive_max_pool2d, aten.adaptive_max_pool3d)
def _adaptive_max_pool(tr, a, out):
    x = a["self"]
    n = 2 if tr.current_op == "adaptive_max_pool2d" else 3
    sizes = list(out[0].shape[-n:])
    if not _poolable(x, out[0], n):
        raise NoLowering()
    # The indices are recorded too; unread, they are dead code and never computed.
    return [tr.call("adaptive_max_pool", [x], ints=sizes), tr.call("adaptive_max_pool_indices", [x], ints=sizes)]


_UPSAMPLE = {"upsample_nearest1d": ("upsample_nearest", 1), "upsample_nearest2d": ("upsample_nearest", 2),
             "upsample_nearest3d": ("upsample_nearest", 3), "_upsample_nearest_exact1d": ("upsample_nearest_exact", 1),
             "_upsample_nearest_exact2d": ("upsample_nearest_exact", 2),
             "_upsample_nearest_exact3d": ("upsample_nearest_exact", 3), "upsample_linear1d": ("upsample_linear", 1),
             "upsample_bilinear2d": ("upsample_linear", 2), "upsample_trilinear3d": ("upsample_linear", 3)}


@handles(*[getattr(aten, name) for name in _UPSAMPLE])
def _upsample(tr, a, out):
    op, n = _UPSAMPLE[tr.current_op]
    x = a.get("self", a.get("input"))
    if (tr.func._overloadname != "default" or x.dim() != n + 2 or x.numel() == 0
            or (op == "upsample_linear" and not x.dtype.is_floating_point)):
        raise NoLowering()
    names = ["scales"] if n == 1 else ["scales_d", "scales_h", "scales_w"][3 - n:]
    scales = [float(a.get(s) or -1.0) for s in names]
    return tr.call(op, [x], ints=list(out.shape[-n:]), floats=scales, int_value=int(bool(a.get("align_corners"))))


@handles(*[getattr(aten, name + "_backward") for name in _UPSAMPLE])
def _upsample_backward(tr, a, out):
    """The gradient of an upsample's input (capture/window_ops.h, upsample_backward)."""
    op, n = _UPSAMPLE[tr.current_op[:-len("_backward")]]
    g = a["grad_output"]
    if tr.func._overloadname != "default" or g.dim() != n + 2 or g.numel() == 0 or not g.dtype.is_floating_point:
        raise NoLowering()
    names = ["scales"] if n == 1 else ["scales_d", "scales_h", "scales_w"][3 - n:]
    scales = [float(a.get(s) or -1.0) for s in names]
    return tr.call(op + "_backward", [g], ints=list(a["input_size"])[-n:], floats=scales,
                   int_value=int(bool(a.get("align_corners"))))


@handles(aten.flip)
def _flip(tr, a, out):
    return tr.call("flip", [a["self"]], ints=list(a["dims"]))


@handles(aten.constant_pad_nd)
def _pad(tr, a, out):
    x, pad = a["self"], list(a["pad"])
    if any(p < 0 for p in pad):
        raise NoLowering()
    lowhigh = [0] * (2 * x.dim())
    for i in range(len(pad) // 2):  # pad lists the last dim first
        d = x.dim() - 1 - i
        lowhigh[2 * d], lowhigh[2 * d + 1] = pad[2 * i], pad[2 * i + 1]
    return tr.call("pad", [x], ints=lowhigh, floats=[float(a.get("value", 0) or 0)])


@handles(aten.repeat)
def _repeat(tr, a, out):
    x, reps = a["self"], list(a["repeats"])
    shape = [1] * (len(reps) - x.dim()) + list(x.shape)
    inter, big = [], []
    for r, s in zip(reps, shape):
        inter += [1, s]
        big += [r, s]
    v = tr.call("reshape", [x], ints=inter)
    v = tr.call_value("expand", [v], ints=big)
    return tr.call_value("reshape", [v], ints=list(out.shape))


@handles(aten.roll)
def _roll(tr, a, out):
    x, shifts, dims = a["self"], list(a["shifts"]), list(a["dims"])
    if not dims:
        raise NoLowering()
    v = Value(tr.value_of(x))
    for s, d in zip(shifts, dims):
        n = x.shape[d]
        if not 0 <= s < n:
            tr.builder.note_size_rule(n, s % max(n, 1))  # the shift modulo the size: not affine in it
        s %= max(n, 1)
        if s == 0:
            continue
        head = Value(tr.call("slice", [v], ints=[d, n - s, n, 1]))
        tail = Value(tr.call("slice", [v], ints=[d, 0, n - s, 1]))
        v = Value(tr.call("concat", [head, tail], ints=[d]))
    return v.vid


# -- matrix products -------------------------------------------------------------------------
# mm / bmm / addmm / baddbmm (what matmul, linear and einsum reach at the ATen level) become
# kiln matmul nodes: BLAS steps whose bias, scaling and activation are pointwise work fused
# into the kernel after them (on CUDA, a row bias goes into the product: Note [Bias in the
# product]). Other dtypes and devices, or KILN_MATMUL=eager, keep them as fallback ops.
_BLAS_DTYPES = (torch.float32, torch.float64)
# CUDA runs half products too (cuBLAS, float32 accumulation, one rounding, as eager's).
_CUBLAS_DTYPES = _BLAS_DTYPES + (torch.float16, torch.bfloat16)
# The CPU runs bfloat16 ones on oneDNN where libdnnl opens (Note [bfloat16 products] in
# runtime/gemm.cpp); float16 products stay eager ops there.
_CPU_HALF_BLAS_DTYPES = (torch.bfloat16,)


def _for_cuda(tr, t):
    """Whether tensor t's products run on cuBLAS: a CUDA tensor, or a CPU example traced for
    the CUDA code generator."""
    return t.device.type == "cuda" or (t.device.type == "cpu" and tr.target == "cuda")


def _blas_ready(tr, *tensors):
    """CPU tensors need a BLAS kiln can open; CUDA ones go to cuBLAS (checked when the program
    loads: without it the function runs eagerly, with the reason recorded)."""
    from . import _C
    t0 = tensors[0]
    cuda = _for_cuda(tr, t0)
    dtypes = _CUBLAS_DTYPES if cuda else _BLAS_DTYPES + (_CPU_HALF_BLAS_DTYPES if _cpu_bf16_products() else ())
    if _C.knob("matmul") != "blas" or any(t.dtype not in dtypes or t.dtype != t0.dtype or t.device != t0.device
                                          for t in tensors):
        return False
    if cuda:
        return t0.device.type == "cuda" or hasattr(_C, "cuda_codegen")
    # No CPU backend (a KILN_CPU=OFF build) runs no CPU product.
    return t0.device.type == "cpu" and hasattr(_C, "blas_library") and bool(_C.blas_library())


@functools.lru_cache(maxsize=None)
def _cpu_bf16_products():
    from . import _C
    return hasattr(_C, "blas_bf16") and _C.blas_bf16()


def _scaled(tr, x, factor):
    return x if factor == 1 else Value(tr.call("mul", [x, factor]))


@handles(aten.mm, aten.bmm)
def _mm(tr, a, out):
    if not _blas_ready(tr, a["self"], a["mat2"], out):
        raise NoLowering()
    return tr.call("matmul", [a["self"], a["mat2"]], int_value=int(tr.current_op == "bmm"))


@handles(aten.addmm, aten.baddbmm)
def _addmm(tr, a, out):
    m1, m2 = (a["mat1"], a["mat2"]) if "mat1" in a else (a["batch1"], a["batch2"])
    beta, alpha = a.get("beta", 1), a.get("alpha", 1)
    if not _blas_ready(tr, m1, m2, out) or not isinstance(a["self"], torch.Tensor) or a["self"].dtype != out.dtype:
        raise NoLowering()
    if out.dtype in (torch.float16, torch.bfloat16) and (
            alpha != 1 or beta != 1 or a["self"].dim() != 1 or m1.dim() != 2
            or not all(1 < d < 65535 * 32 for d in (*m1.shape, m2.shape[1]))):
        # Eager rounds alpha * m1 @ m2 + beta * self once; kiln's half product rounds once only
        # with a row bias the product itself adds, within the bounds of cuBLASLt's epilogue
        # (Note [Bias in the product]; the CPU's bfloat16 step keeps the same bounds).
        raise NoLowering()
    product = _scaled(tr, Value(tr.call("matmul", [m1, m2], int_value=int(tr.current_op == "baddbmm"))), alpha)
    if beta == 0:  # torch ignores self then (nan and inf included)
        return product.vid if isinstance(product, Value) else product
    return tr.call("add", [_scaled(tr, a["self"], beta), product])


@handles(aten.mv, aten.dot)
def _mv(tr, a, out):
    m, v = a["self"], a["vec"] if "vec" in a else a["tensor"]
    if not _blas_ready(tr, m, v, out):
        raise NoLowering()
    lhs = m if m.dim() == 2 else Value(tr.call("reshape", [m], ints=[1, m.shape[0]]))
    col = Value(tr.call("reshape", [v], ints=[v.shape[0], 1]))
    return tr.call("reshape", [Value(tr.call("matmul", [lhs, col]))], ints=list(out.shape) or [])


@handles(aten._safe_softmax)
def _safe_softmax(tr, a, out):
    """softmax that gives 0, not nan, on rows that are all -inf (SDPA's math path masks with it):
    eager's rule is where(all(x == -inf), 0, softmax(x)); a row is all -inf exactly when its
    max is -inf (a nan makes both false)."""
    x, dim = a["self"], a["dim"]
    if a.get("dtype") not in (None, x.dtype) or not x.dtype.is_floating_point:
        raise NoLowering()
    sm = Value(tr.call("softmax", [x], ints=[dim]))
    dead = Value(tr.call("eq", [Value(tr.call("amax", [x], ints=[dim % max(x.dim(), 1)], int_value=1)),
                                float("-inf")]))
    return tr.call("where", [dead, 0.0, sm])


# The derivative and loss handlers register themselves into HANDLERS; imported last, when every
# name they import from this module exists.
from . import _backward_handlers  # noqa: E402,F401
