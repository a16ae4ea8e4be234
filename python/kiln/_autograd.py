"""A compiled training step inside PyTorch's autograd: one autograd node per compiled segment.

The forward program runs inside `SegmentFunction.forward`, which saves what the partition chose
(passes/partition_joint.cpp) with ctx.save_for_backward (so an in-place change of a saved tensor
before the backward raises autograd's own error, as eager's would); `backward` runs the backward
program on those saved tensors and the gradients of the outputs. Everything around it is
PyTorch's: loss.backward(), torch.autograd.grad, gradient accumulation, retain_graph, tensor
hooks, optimizers, DistributedDataParallel's gradient hooks.
"""

import torch

from . import _C, _counters


class TrainingRunner:
    """What a training entry calls: guards, then the compiled forward inside autograd.

    `program`: a _C.TrainingProgram. `fallbacks`: the trace's eager-op table (shared by both
    programs). `differentiable`: forward-output positions that have a tangent, in tangent order.
    `grad_leaves`: (leaf index, gradient position) of each input that receives a gradient."""

    def __init__(self, guards, program, fallbacks, differentiable, grad_leaves, output_meta):
        self.guards = guards
        self.program = program
        self.forward = _C.Entry(guards, program.forward, list(fallbacks))
        self.backward = _C.Entry(_C.GuardSet(), program.backward, list(fallbacks))
        self.differentiable = list(differentiable)
        self.grad_leaves = list(grad_leaves)
        self.output_meta = output_meta  # per forward output: (shape, dtype, device)
        self.saved_positions = list(program.saved_positions)
        self.saved_inputs = list(program.saved_inputs)
        self.gradient_positions = list(program.gradient_positions)
        self.failure = ""

    def __call__(self, full, grad):
        """The forward outputs (attached to autograd), None when the guards miss, or False when
        the program failed (eager then redoes the call)."""
        if not self.guards.check(full, grad):
            return None
        inputs = [full[i] for i, _ in self.grad_leaves]
        out = SegmentFunction.apply(self, full, *inputs)
        if out is _FAILED:
            return False
        return list(out)

    def last_failure(self):
        return self.failure or self.forward.last_failure()

    def failed_on_data_dependent_shape(self):
        return self.forward.failed_on_data_dependent_shape()


class _Failed:
    """The forward program failed: apply() returns this (a non-tensor) instead of outputs."""


_FAILED = _Failed()


class SegmentFunction(torch.autograd.Function):
    """One compiled segment of a training step (see the module docstring)."""

    @staticmethod
    def forward(ctx, runner, full, *grad_inputs):
        out = runner.forward.run(full)
        if out is False:
            return _FAILED
        ctx.runner = runner
        ctx.set_materialize_grads(False)
        saved = [out[p] for p in runner.saved_positions] + [full[i] for i in runner.saved_inputs]
        ctx.save_for_backward(*saved)
        differentiable = set(runner.differentiable)
        ctx.mark_non_differentiable(*[t for j, t in enumerate(out) if j not in differentiable])
        _counters.bump("compiled_forward_calls")
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        runner = ctx.runner
        if torch.is_grad_enabled():
            # create_graph=True: the compiled backward is not differentiable itself.
            _counters.record_eager("autograd: double backward (create_graph=True) through a kiln-compiled function")
            raise RuntimeError("kiln: double backward (create_graph=True) through a compiled function is not "
                               "supported; compile it with backend='eager' (or call it with KILN_DISABLE=1) "
                               "where higher-order gradients are needed")
        tangents = []
        for p in runner.differentiable:
            g = grads[p]
            if g is None:
                shape, dtype, device = runner.output_meta[p]
                g = torch.zeros(shape, dtype=dtype, device=device)
            elif not g.is_contiguous():
                g = g.contiguous()  # the backward was compiled for contiguous tangents
            tangents.append(g)
        leaves = list(ctx.saved_tensors) + tangents
        out = runner.backward.run(leaves)
        if out is False:
            raise RuntimeError(f"kiln: the compiled backward failed: {runner.backward.last_failure()}")
        _counters.bump("compiled_backward_calls")
        result = [None, None]
        for _, pos in runner.grad_leaves:
            result.append(out[runner.gradient_positions[pos]])
        return tuple(result)
