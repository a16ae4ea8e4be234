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


# Backward formulas autograd evaluates differently while a dispatch mode is active (the tracer
# is one): PyTorch then takes the tensor-subclass branch of prod's and cumprod's backward, which
# avoids eager's data-dependent zero check and differs from eager's gradient where the input
# holds NaN or inf (found by the training fuzzer). A traced backward would bake that branch in.
_MODE_SENSITIVE_BACKWARDS = {"ProdBackward0", "ProdBackward1", "CumprodBackward0"}


def check_autograd_graph(outputs, inputs):
    """Walks autograd's graph from `outputs` back to `inputs` and raises CaptureFailed for what a
    compiled backward cannot reproduce: a custom autograd.Function (incl. backward hooks of
    modules), a formula that differs under tracing (_MODE_SENSITIVE_BACKWARDS), or a leaf tensor
    that is not one of `inputs`."""
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
        if type(node).__name__ in _MODE_SENSITIVE_BACKWARDS:
            raise CaptureFailed(f"autograd: {type(node).__name__}'s formula differs from eager's under tracing "
                                "(for NaN and inf inputs); the training step runs eagerly")
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


def _gradients(outputs, inputs, tangents):
    """torch.autograd.grad(outputs, inputs, tangents, retain_graph=True, allow_unused=True)
    straight through autograd's engine: autograd.grad's checks of given output gradients import
    torch.fx's symbolic shapes (sympy) on first use, ~0.4 s of a process's first training
    capture, and kiln's tangents are made here with their outputs' shapes and dtypes."""
    run = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if run is None:  # another torch
        return torch.autograd.grad(outputs, inputs, tangents, retain_graph=True, allow_unused=True)
    return run(tuple(outputs), tuple(tangents), True, False, tuple(inputs), True, False)


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
            grads = _gradients(outputs, inputs, tangents)
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


def check_segment_independence(inputs, carried):
    """A segment's backward is traced as autograd.grad(its outputs, its inputs), which gives the
    total derivative: where one of its inputs also reaches its outputs through a carried input
    (a weight used before and after a graph break, a carried value computed from another), the
    gradient would count that path twice (once here, once in the earlier segment's backward).
    Raises CaptureFailed in that case."""
    watched = {}
    for t in inputs:
        key = t.grad_fn if t.grad_fn is not None else id(t)
        watched[key] = t
    seen = set()
    stack = [fn for c in carried if c.grad_fn is not None for fn, _ in c.grad_fn.next_functions]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if node in watched or (variable is not None and id(variable) in watched):
            raise CaptureFailed("autograd: a tensor reaches a segment both directly and through a value carried "
                                "across a graph break (a weight used on both sides of it): that training step runs "
                                "eagerly")
        stack.extend(fn for fn, _ in node.next_functions)


def capture_joint(tracer, seg, tensor_of, first_tangent, grad_inputs=None, flows=None):
    """Records autograd's backward of the traced forward into segment `seg` (the trace's only
    one). `tensor_of`: the traced tensor of each of seg.needed's value ids (the forward outputs).
    Returns a dict describing the joint graph, None when no output has a gradient (the call then
    compiles as inference does), or a CaptureFailed:
      differentiable  positions in seg.needed with a tangent, in tangent order
      tangents        the tangents' value ids;  grad_vids: the gradients' value ids
      grad_leaves     (leaf index, position in grad_vids) of each input that gets a gradient
      backward_start  the first node recorded while autograd ran
      output_meta     (shape, dtype, device) of each forward output (zeros for a missing grad)
    `grad_inputs`: (leaf index, tensor) of the inputs to differentiate for (default: every
    differentiable leaf of the trace). `flows`: the needed values later segments or the result
    compute with (default: all); one only read into Python (`if t.sum() > 0`) gets no gradient,
    as in eager, where nothing differentiates it (a zero tangent would turn a NaN of its
    backward into the gradients: 0 * nan)."""
    positions = [j for j, vid in enumerate(seg.needed)
                 if differentiable(tensor_of.get(vid)) and (flows is None or vid in flows)]
    if not positions:
        return None
    if grad_inputs is None:
        grad_inputs = list(enumerate(tracer.leaves))
    # The same tensor passed twice is one leaf to autograd: autograd.grad gives its whole
    # gradient at each position, so only the first position receives it (else it doubles).
    firsts, seen = [], set()
    for i, t in grad_inputs:
        if differentiable(t) and id(t) not in seen:
            seen.add(id(t))
            firsts.append((i, t))
    grad_inputs = firsts
    outputs = [tensor_of[seg.needed[j]] for j in positions]
    try:
        tangents, grads, backward_start = capture_backward(tracer, outputs, [t for _, t in grad_inputs],
                                                           first_tangent)
    except CaptureFailed as e:
        if e.location is None:
            e.location = "(backward)"
        return e
    grad_leaves, grad_vids = [], []
    for (leaf, _), vid in zip(grad_inputs, grads):
        if vid is not None:
            grad_leaves.append((leaf, len(grad_vids)))
            grad_vids.append(vid)
    meta = [(tuple(t.shape), t.dtype, t.device) if t is not None else None
            for t in (tensor_of.get(v) for v in seg.needed)]
    return {"differentiable": positions, "tangents": tangents, "grad_vids": grad_vids,
            "grad_leaves": grad_leaves, "backward_start": backward_start, "output_meta": meta}
