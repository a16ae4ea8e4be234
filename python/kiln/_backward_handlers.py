"""Handlers of the ATen ops autograd emits in backward passes (threshold_backward,
_softmax_backward_data, native_layer_norm_backward, nll_loss_backward, ...) and of the losses
training needs. They bind arguments only: each rule is C++ (capture/backward_ops.h). Forms a
rule does not lower (other dtypes, mixed dtypes) raise NoLowering and run eagerly.

Registered into _handlers.HANDLERS when _handlers is imported (its last line imports this
module).
"""

import torch

from ._handlers import INT64_MAX, NoLowering, Value, aten, handles

_FLOAT_LOSS_DTYPES = (torch.float32, torch.float64)


def _same_float(*tensors):
    """Raises NoLowering unless every tensor has one floating dtype (the rules do not promote)."""
    t0 = tensors[0]
    if not t0.dtype.is_floating_point or any(t.dtype != t0.dtype for t in tensors):
        raise NoLowering()


# ---- pointwise derivatives ----------------------------------------------------------------------
def _pointwise(name, second, floats=lambda a: [], int_value=lambda a: 0):
    """A handler for the derivative `name` of (grad_output, a[second])."""
    def handler(tr, a, out):
        g, x = a["grad_output"], a[second]
        _same_float(g, x)
        return tr.call(name, [g, x], floats=[float(v) for v in floats(a)], int_value=int(int_value(a)))
    return handler


for _packet, _name, _second in [
    (aten.silu_backward, "silu_backward", "self"), (aten.mish_backward, "mish_backward", "self"),
    (aten.hardswish_backward, "hardswish_backward", "self"),
    (aten.hardsigmoid_backward, "hardsigmoid_backward", "self"),
    (aten.sigmoid_backward, "sigmoid_backward", "output"), (aten.tanh_backward, "tanh_backward", "output"),
]:
    handles(_packet)(_pointwise(_name, _second))

handles(aten.threshold_backward)(_pointwise("threshold_backward", "self", lambda a: [a["threshold"]]))
handles(aten.gelu_backward)(_pointwise("gelu_backward", "self", int_value=lambda a: a.get("approximate") == "tanh"))
handles(aten.leaky_relu_backward)(_pointwise("leaky_relu_backward", "self", lambda a: [a["negative_slope"]]))
handles(aten.hardtanh_backward)(_pointwise("hardtanh_backward", "self", lambda a: [a["min_val"], a["max_val"]]))
handles(aten.softplus_backward)(_pointwise("softplus_backward", "self", lambda a: [a["beta"], a["threshold"]]))
handles(aten.elu_backward)(_pointwise("elu_backward", "self_or_result",
                                      lambda a: [a["alpha"], a["scale"], a["input_scale"]],
                                      lambda a: a["is_result"]))


# ---- row derivatives ----------------------------------------------------------------------------
@handles(aten._softmax_backward_data, aten._log_softmax_backward_data)
def _softmax_backward(tr, a, out):
    g, y = a["grad_output"], a["output"]
    _same_float(g, y)
    if a["input_dtype"] != g.dtype:
        raise NoLowering()  # a half softmax computed in float32 (half_to_float)
    name = "softmax_backward" if tr.current_op == "_softmax_backward_data" else "log_softmax_backward"
    return tr.call(name, [g, y], ints=[a["dim"]])


@handles(aten.native_layer_norm_backward)
def _layer_norm_backward(tr, a, out):
    """Each result only where output_mask asks for it (eager returns None for the others)."""
    g, x, w = a["grad_out"], a["input"], a["weight"]
    k = len(a["normalized_shape"])
    _same_float(g, x, *([w] if w is not None else []))
    mean, rstd = a["mean"], a["rstd"]
    if k == 0 or not (mean.dtype.is_floating_point and rstd.dtype.is_floating_point):
        raise NoLowering()
    stats = [g, x, mean, rstd]
    grad_input = grad_weight = grad_bias = None
    if out[0] is not None:
        grad_input = tr.call("layer_norm_backward_input", stats + ([w] if w is not None else []),
                             ints=[k, int(w is not None)])
    if out[1] is not None:
        grad_weight = tr.call("layer_norm_backward_weight", stats, ints=[k])
    if out[2] is not None:
        grad_bias = tr.call("layer_norm_backward_bias", [g], ints=[k])
    return [grad_input, grad_weight, grad_bias]


# ---- losses -------------------------------------------------------------------------------------
def _loss_operands(x, target, weight, *more):
    if (x.dtype not in _FLOAT_LOSS_DTYPES or target.dtype != torch.int64
            or any(t.dtype != x.dtype for t in more + ((weight,) if weight is not None else ()))):
        raise NoLowering()  # half losses accumulate in the half type in eager; byte targets
    if x.dim() == 0 or x.shape[0 if x.dim() == 1 else 1] == 0:
        raise NoLowering()
    return [x, target] + ([weight] if weight is not None else [])


def _loss_ints(a):
    return [a["reduction"], a["ignore_index"], int(a["weight"] is not None)]


@handles(aten.nll_loss_forward, aten.nll_loss2d_forward)
def _nll_loss(tr, a, out):
    """(output, total_weight); an out-of-range target fails the compiled call, and eager raises."""
    ops = _loss_operands(a["self"], a["target"], a["weight"])
    return [tr.call("nll_loss", ops, ints=_loss_ints(a)), tr.call("nll_loss_total_weight", ops, ints=_loss_ints(a))]


@handles(aten.nll_loss_backward, aten.nll_loss2d_backward)
def _nll_loss_backward(tr, a, out):
    g, x, target, total_weight, w = a["grad_output"], a["self"], a["target"], a["total_weight"], a["weight"]
    _loss_operands(x, target, w, g, total_weight)
    return tr.call("nll_loss_backward", [g, x, target, total_weight] + ([w] if w is not None else []),
                   ints=_loss_ints(a))


# ---- indexing -----------------------------------------------------------------------------------
@handles(aten.embedding_dense_backward)
def _embedding_backward(tr, a, out):
    g, indices, rows = a["grad_output"], a["indices"], a["num_weights"]
    if g.dtype not in _FLOAT_LOSS_DTYPES or indices.dtype not in (torch.int32, torch.int64) or rows < 1 or g.dim() == 0:
        raise NoLowering()
    return tr.call("embedding_dense_backward", [g, indices],
                   ints=[rows, a["padding_idx"], int(bool(a["scale_grad_by_freq"]))])


def _zeros_with(tr, g, dtype, sizes, dim, start, end, step):
    """zeros of `sizes` with g written into [start:end:step] along dim."""
    zeros = Value(tr.call("full", [0], ints=sizes, dtype=tr.dtype_name(dtype)))
    return tr.call("slice_scatter", [zeros, g], ints=[dim, start, min(end, INT64_MAX), step])


@handles(aten.slice_backward)
def _slice_backward(tr, a, out):
    sizes = list(a["input_sizes"])
    if not sizes or a["step"] < 1:
        raise NoLowering()
    g = a["grad_output"]
    return _zeros_with(tr, g, g.dtype, sizes, a["dim"] % len(sizes), a["start"], a["end"], a["step"])


@handles(aten.select_backward)
def _select_backward(tr, a, out):
    g, sizes = a["grad_output"], list(a["input_sizes"])
    if not sizes:
        raise NoLowering()
    dim = a["dim"] % len(sizes)
    index = a["index"] + sizes[dim] if a["index"] < 0 else a["index"]
    row = list(sizes)
    row[dim] = 1
    return _zeros_with(tr, Value(tr.call("reshape", [g], ints=row)), g.dtype, sizes, dim, index, index + 1, 1)


@handles(aten.mse_loss)
def _mse_loss(tr, a, out):
    x, t = a["self"], a["target"]
    if x.dtype not in _FLOAT_LOSS_DTYPES or t.dtype != x.dtype or x.shape != t.shape:
        raise NoLowering()
    return tr.call("mse_loss", [x, t], ints=[a["reduction"]])


@handles(aten.mse_loss_backward)
def _mse_loss_backward(tr, a, out):
    g, x, t = a["grad_output"], a["self"], a["target"]
    if x.dtype not in _FLOAT_LOSS_DTYPES or t.dtype != x.dtype or g.dtype != x.dtype or x.shape != t.shape:
        raise NoLowering()
    return tr.call("mse_loss_backward", [g, x, t], ints=[a["reduction"]])
