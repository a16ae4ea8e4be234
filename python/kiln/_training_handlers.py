"""Handlers of the ATen ops a training step reaches beyond the inference ones: attention forward
and backward, batch norm in training mode and its backward, pooling backward. Each binds the
op's arguments and calls one of the capture-level names of capture/training_ops.cpp, where the
math lives; forms those do not lower raise NoLowering (an eager fallback op) here, before
anything is recorded. The handlers register into HANDLERS (imported after _handlers, by
_trace)."""

import torch

from ._handlers import NoLowering, Value, _batch_norm, _blas_ready, _per_dim, _poolable, broadcast_shape, handles
from ._trace import CaptureFailed

aten = torch.ops.aten

_FLOATS = (torch.float32, torch.float64)


def _absent(t):
    """An optional tensor operand: the tensor, or the number that stands for none."""
    return 0 if t is None else t


def _scale(a):
    return [] if a.get("scale") is None else [float(a["scale"])]


def _attention_lowers(tr, q, k, v, mask, causal, out):
    """Whether capture/attention_ops.h lowers this attention: products on a BLAS kiln opens,
    non-empty operands of one rank whose batch dims agree, key/value heads that divide the
    query heads, and at most one of a mask (boolean or of q's dtype) and causal masking."""
    if not _blas_ready(tr, q, k, v, out) or q.dim() < 2 or q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
        return False
    if k.dim() != q.dim() or v.dim() != q.dim():
        return False
    if mask is not None and (mask.dtype not in (torch.bool, q.dtype) or causal):
        return False
    batch = q.dim() - 3 if q.dim() >= 3 else 0
    heads, kv = (q.shape[-3], k.shape[-3]) if q.dim() >= 3 else (1, 1)
    if q.shape[:batch] != k.shape[:batch] or k.shape[:-1] != v.shape[:-1] or heads % kv:
        return False
    if q.shape[-1] != k.shape[-1]:
        return False
    if mask is not None:
        try:
            scores = list(q.shape[:-1]) + [k.shape[-2]]
            if broadcast_shape(mask.shape, scores) != scores:
                return False
        except RuntimeError:
            return False
    return True


@handles(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa(tr, a, out):
    """F.scaled_dot_product_attention on the CPU (torch turns a boolean mask into a 0 / -inf one
    before this op): the output as two products and a row kernel (13% faster than eager's
    fused CPU kernel at 8x8x128x64), and the logsumexp the backward reads (computed only when
    read). Dropout stays eager."""
    q, k, v, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    causal = bool(a.get("is_causal"))
    if a.get("dropout_p", 0.0) != 0.0 or not _attention_lowers(tr, q, k, v, mask, causal, out[0]):
        raise NoLowering()
    operands = [q, k, v, _absent(mask)]
    return [tr.call("sdpa", operands, ints=[int(causal), r], floats=_scale(a)) for r in (0, 1)]


@handles(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_backward(tr, a, out):
    """The flash-attention backward: the probabilities rebuilt from the saved logsumexp."""
    q, k, v, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    causal = bool(a.get("is_causal"))
    g, o, lse = a["grad_out"], a["out"], a["logsumexp"]
    if (a.get("dropout_p", 0.0) != 0.0 or q.dtype not in _FLOATS
            or not _attention_lowers(tr, q, k, v, mask, causal, out[0])
            or any(t.dtype != q.dtype for t in (g, o, lse)) or g.shape != o.shape
            or list(lse.shape) != list(q.shape[:-1])):
        raise NoLowering()
    operands = [g, q, k, v, o, lse, _absent(mask)]
    return [tr.call("sdpa_backward", operands, ints=[int(causal), r], floats=_scale(a)) for r in (0, 1, 2)]


def _per_channel(x, *vectors):
    """Whether batch norm's optional per-channel operands are absent or x.dtype[C]."""
    return all(t is None or (t.dtype == x.dtype and list(t.shape) == [x.shape[1]]) for t in vectors)


def _record_update(tr, target, vid):
    """Records value `vid` as the new contents of `target`, which the op wrote in place although
    its schema says nothing of it (native_batch_norm's running statistics): as an in-place op on
    it would (Tracer._record_inplace), the tensor now reads `vid`, and an argument, parameter or
    buffer is written back after each compiled call."""
    leaf = tr.leaf_index.get(id(target))
    ptr = target.untyped_storage().data_ptr()
    shared = any(tid != id(target) and t is not None and t.untyped_storage().data_ptr() == ptr
                 for tid, t in ((tid, r()) for tid, r in tr.live.copy().items()))
    if id(target) in tr.views or shared or (leaf is not None and target.requires_grad):
        raise CaptureFailed("batch_norm updates running statistics that share memory with another tensor",
                            op="aten.native_batch_norm")
    tr._bind_result(target, vid)
    tr._note_mutation(target, leaf, silent=True)  # eager's kernel writes without a version bump


@handles(aten.native_batch_norm)
def _native_batch_norm(tr, a, out):
    """Batch norm; in training mode (batch statistics) it also updates running_mean and
    running_var in place, recorded as those buffers' new values. Eval mode: _batch_norm."""
    if not a.get("training"):
        return _batch_norm(tr, a, out)
    x, w, b, rm, rv = a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"]
    if (x.dtype not in _FLOATS or x.dim() < 2 or x.numel() == 0 or not _per_channel(x, w, b, rm, rv)
            or a.get("momentum") is None):
        # Not a fallback op: eager's in-place update of the buffers would not be seen by the graph.
        raise CaptureFailed(f"batch_norm in training mode of {x.dtype} {tuple(x.shape)} is not lowered",
                            op="aten.native_batch_norm")
    # The old running statistics are read before their new values are bound.
    operands = [x, _absent(w), _absent(b)] + [Value(tr.value_of(t)) if t is not None else 0 for t in (rm, rv)]
    floats = [float(a["momentum"]), float(a["eps"])]
    vids = [tr.call("batch_norm_train", operands, ints=[r], floats=floats) for r in range(5)
            if r < 3 or (rm, rv)[r - 3] is not None]
    for t, vid in zip([t for t in (rm, rv) if t is not None], vids[3:]):
        _record_update(tr, t, vid)
    return vids[:3]


@handles(aten.native_batch_norm_backward)
def _native_batch_norm_backward(tr, a, out):
    x, g, w = a["input"], a["grad_out"], a["weight"]
    rm, rv, sm, si = a["running_mean"], a["running_var"], a["save_mean"], a["save_invstd"]
    train = bool(a["train"])
    stats = (sm, si) if train else (rm, rv)
    if not train:
        sm = si = None  # eval mode reads the running statistics; eager's saved ones are empty
    if (x.dtype not in _FLOATS or x.dim() < 2 or x.numel() == 0 or g.dtype != x.dtype or g.shape != x.shape
            or any(t is None for t in stats) or not _per_channel(x, w, rm, rv, sm, si)):
        raise NoLowering()
    operands = [g, x, _absent(w), _absent(rm), _absent(rv), _absent(sm), _absent(si)]
    mask = list(a["output_mask"])
    return [tr.call("batch_norm_backward", operands, ints=[int(train), r], floats=[float(a["eps"])])
            if mask[r] else None for r in range(3)]


@handles(aten.max_pool2d_with_indices_backward, aten.max_pool3d_with_indices_backward,
         aten.adaptive_max_pool2d_backward, aten.adaptive_max_pool3d_backward)
def _max_pool_backward(tr, a, out):
    """max_pool's and adaptive_max_pool's backward alike: grad_output added at the flat plane
    positions the forward's indices hold, in output order (as both of eager's kernels do)."""
    n = 3 if tr.current_op in ("max_pool3d_with_indices_backward", "adaptive_max_pool3d_backward") else 2
    g, x, idx = a["grad_output"], a["self"], a["indices"]
    if not _poolable(x, g, n) or g.dtype != x.dtype or idx.dtype != torch.int64 or idx.shape != g.shape:
        raise NoLowering()
    return tr.call("max_pool_backward", [g, x, idx], ints=[n])


@handles(aten.avg_pool2d_backward, aten.avg_pool3d_backward)
def _avg_pool_backward(tr, a, out):
    n = 2 if tr.current_op == "avg_pool2d_backward" else 3
    g, x = a["grad_output"], a["self"]
    if not _poolable(x, g, n) or g.dtype != x.dtype:
        raise NoLowering()
    k = _per_dim(a["kernel_size"], n)
    window = k + _per_dim(a.get("stride"), n, k) + _per_dim(a.get("padding", 0), n) + [1] * n
    divisor = a.get("divisor_override") or 0
    return tr.call("avg_pool_backward", [g, x], ints=[n] + window + [int(bool(a.get("ceil_mode"))),
                                                                     int(bool(a.get("count_include_pad", True))),
                                                                     divisor])


@handles(aten._adaptive_avg_pool2d_backward, aten._adaptive_avg_pool3d_backward)
def _adaptive_avg_pool_backward(tr, a, out):
    n = 2 if tr.current_op == "_adaptive_avg_pool2d_backward" else 3
    g, x = a["grad_output"], a["self"]
    if not _poolable(x, g, n) or g.dtype != x.dtype or g.dim() != x.dim():
        raise NoLowering()
    return tr.call("adaptive_avg_pool_backward", [g, x], ints=[n])

