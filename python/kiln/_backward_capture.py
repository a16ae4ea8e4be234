"""Capture of a training step's backward: after the forward is traced, PyTorch's own autograd
runs the backward of the traced outputs under the same tracer, so the ATen ops it runs (mm,
threshold_backward, native_layer_norm_backward, ...) are recorded into the same graph.

Note [Training capture]
Two routes lead to a compiled backward: derivative rules per op of kiln's IR (tinygrad's
gradient table), or autograd's backward traced like any other ATen code (AOTAutograd's joint
graph). kiln takes the second: the backward is then eager's own formulas, op for op (batch
norm's training backward, SDPA's, a custom autograd.Function's would be too), and an op kiln
cannot lower still runs, as an eager fallback inside the compiled backward, instead of costing
the whole segment its compiled gradient. The recorded backward is kiln IR like any forward: it
goes through the same passes and code generators; C++ partitions the joint graph
(passes/partition_joint.cpp) and the lowerings of backward ops live in C++ beside the forward's.

Tracing the backward runs it once on the capturing call (with retain_graph, so the user's own
backward of that call still works). That run must not be visible:
- hooks the user registered on the function's inputs would fire, and be recorded into the
  backward where the compiled call's autograd runs them again: they are switched off around it;
- a hook or custom autograd.Function inside the function runs Python that a compiled backward
  would skip (module full-backward hooks are such a Function): the capture stops, and the call
  runs eagerly with the reason;
- a tensor made inside the function that requires grad (a leaf autograd would accumulate into)
  has no place in a compiled call's gradients: the capture stops too.
"""

import contextlib

import torch

from ._trace import CaptureFailed


def differentiable(t):
    """Whether autograd gives `t` a gradient: a float (or complex) tensor that requires grad."""
    return isinstance(t, torch.Tensor) and t.requires_grad and (t.is_floating_point() or t.is_complex())


def check_autograd_graph(outputs, inputs):
    """Walks autograd's graph from `outputs` back to `inputs` and raises CaptureFailed for what a
    compiled backward cannot reproduce: a custom autograd.Function (incl. backward hooks of
    modules), or a leaf tensor that is not one of `inputs`."""
    stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
    leaf_ids = {id(t) for t in inputs if t.grad_fn is None}
    seen, stack = set(), [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            raise CaptureFailed(f"autograd: the function uses a custom autograd.Function "
                                f"({type(node).__name__}); its backward runs eagerly")
        variable = getattr(node, "variable", None)
        if type(node).__name__ == "AccumulateGrad" and variable is not None and id(variable) not in leaf_ids:
            raise CaptureFailed("autograd: the function makes a tensor that requires grad (a leaf its compiled "
                                "gradients would not reach)")
        stack.extend(fn for fn, _ in node.next_functions)


@contextlib.contextmanager
def hooks_switched_off(tensors):
    """Empties the Python hook dicts of `tensors` (autograd's C++ side calls whatever they hold
    when it runs them) and restores them afterwards."""
    saved = []
    for t in tensors:
        hooks = t._backward_hooks
        if hooks:
            saved.append((hooks, dict(hooks)))
            hooks.clear()
    try:
        yield
    finally:
        for hooks, items in saved:
            hooks.update(items)


def capture_backward(tracer, outputs, inputs, first_index):
    """Records the backward of `outputs` (differentiable traced tensors, one tangent each) with
    respect to `inputs` (traced leaves that require grad) into the tracer's current segment.
    Tangents are contiguous graph inputs numbered from `first_index`. Returns (tangent value ids,
    value id of each input's gradient or None where the input gets none, the node id where the
    backward starts)."""
    check_autograd_graph(outputs, inputs)
    seg = tracer.seg
    backward_start = seg.builder.num_nodes()
    tangents = [torch.ones(o.shape, dtype=o.dtype, device=o.device) for o in outputs]
    tangent_vids = [tracer.add_tangent(t, first_index + k) for k, t in enumerate(tangents)]
    from ._trace import _EscapeWatch
    tracer.in_backward = True
    try:
        with hooks_switched_off(inputs), _EscapeWatch(tracer), tracer:
            grads = torch.autograd.grad(outputs, inputs, tangents, retain_graph=True, allow_unused=True)
    except CaptureFailed:
        raise
    except Exception as e:  # noqa: BLE001 - eager's own backward fails here
        # (an op without a derivative, such as floor_divide): the call runs eagerly, so that the
        # error comes from the caller's backward, as eager's does
        if tracer.failure is not None:
            raise tracer.failure from e
        raise CaptureFailed(f"autograd: the backward raises ({str(e).splitlines()[0]})") from e
    finally:
        tracer.in_backward = False
    if tracer.failure is not None:
        raise tracer.failure
    grad_vids = [None if g is None else tracer.value_of(g) for g in grads]
    return tangent_vids, grad_vids, backward_start
