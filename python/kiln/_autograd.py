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


class TrainingPrograms:
    """What inspection reads of a compiled training step (kiln.kernels, kiln.explain): the two
    programs (CPU Programs or CUDA runners) and the partition between them."""

    def __init__(self, compiled, forward, backward):
        self.forward, self.backward = forward, backward
        self.joint_graph = compiled.joint_graph
        self.partition = compiled.partition
        self.saved_bytes = compiled.saved_bytes
        self.recomputed = compiled.recomputed


class TrainingRunner:
    """What a training entry calls: guards, then the compiled forward inside autograd.

    `program`: a _C.TrainingProgram or _C.CudaTraining (the partition: saved positions, saved
    inputs, gradient positions). `forward`, `backward`: their runners, each with run(leaves) ->
    outputs or False and last_failure(). `differentiable`: forward-output positions that have a
    tangent, in tangent order. `grad_leaves`: (leaf index, gradient position) of each input that
    receives a gradient. `backward_graph`: the backward graph's text (KILN_CHECK's report)."""

    def __init__(self, guards, program, forward, backward, differentiable, grad_leaves, output_meta,
                 backward_graph=""):
        self.guards = guards
        self.program = program
        self.forward = forward
        self.backward = backward
        self.backward_graph = backward_graph
        self.differentiable = list(differentiable)
        self.grad_leaves = list(grad_leaves)
        self.output_meta = output_meta  # per forward output: (shape, dtype, device)
        self.n_outputs = len(output_meta)  # forward outputs the call returns (saved-only values follow)
        self.saved_positions = list(program.saved_positions)
        self.saved_inputs = list(program.saved_inputs)
        self.gradient_positions = list(program.gradient_positions)
        self.gradient_tangents = [list(d) for d in program.gradient_tangents]
        self.failure = ""
        self.out_specs = []  # the entry's result specs: which result leaf each output is (KILN_CHECK)
        self.check = None    # the GradientCheck of the call being run (KILN_CHECK=1)
        # (function, args, kwargs) of the call being run, kept for a double backward, which
        # replays it eagerly (see _eager_double_backward); None in a tree's segments.
        self.replay = None
        self.has_mutations = False  # the call writes arguments or buffers: a replay would again

    def __call__(self, full, grad):
        """The forward outputs (attached to autograd), None when the guards miss, or False when
        the program failed (eager then redoes the call)."""
        if not self.guards.check(full, grad):
            return None
        inputs = [full[i] for i, _ in self.grad_leaves]
        self.check, GradientCheck.pending = GradientCheck.pending, None  # KILN_CHECK=1 only
        out = SegmentFunction.apply(self, full, *inputs)
        if out is _FAILED:
            return False
        return list(out)

    def last_failure(self):
        return self.failure or self.forward.last_failure()

    def failed_on_data_dependent_shape(self):
        return self.forward.failed_on_data_dependent_shape()


class _NoGuards:
    """The guards of one size's step inside a dynamic training step (its runner checked them)."""

    @staticmethod
    def check(full, grad):
        return True


class DynamicTrainingRunner:
    """What a dynamic training step's entry calls (runtime/dynamic_training.h): its symbolic
    guards give the size s; the step at s (partitioned and lowered on its first call there, on
    the machine code compiled once) runs as a TrainingRunner. A size whose lowering does not
    match misses, and the caller specialises on it."""

    MAX_INSTANCES = 32  # steps kept at once (each holds its programs' arena plans)

    def __init__(self, guards, dynamic, fallbacks, differentiable, grad_leaves, output_meta):
        self.guards = guards
        self.dynamic = dynamic
        self.fallbacks = list(fallbacks)
        self.differentiable, self.grad_leaves, self.output_meta = differentiable, grad_leaves, output_meta
        self.instances = {}
        self.refused = {}  # size -> why its lowering does not match
        self.last = None
        # Per call, as TrainingRunner's (set by the caller before the call, handed to the step)
        self.replay = self.check = None
        self.out_specs = []
        self.has_mutations = False

    def _runner(self, s):
        tp, why = self.dynamic.at(s)
        if tp is None:
            if len(self.refused) >= 1024:
                self.refused.clear()
            self.refused[s] = why
            return None
        meta = [None if m is None else (tuple(sizes), m[1], m[2])
                for m, sizes in zip(self.output_meta, tp.forward_output_sizes)]
        runner = TrainingRunner(_NoGuards, tp, _C.Entry(_C.GuardSet(), tp.forward, self.fallbacks, lazy_outputs=True),
                                _C.Entry(_C.GuardSet(), tp.backward, self.fallbacks, lazy_outputs=True),
                                self.differentiable, self.grad_leaves, meta, tp.backward.graph)
        if len(self.instances) >= self.MAX_INSTANCES:
            self.instances.clear()
        self.instances[s] = runner
        return runner

    def __call__(self, full, grad):
        if not self.guards.check(full, grad):
            return None
        s = self.guards.symbol
        runner = self.instances.get(s)
        if runner is None and s not in self.refused:
            runner = self._runner(s)
        if runner is None:
            return None
        runner.replay, self.replay = self.replay, None
        runner.out_specs, runner.has_mutations = self.out_specs, self.has_mutations
        self.last = runner
        return runner(full, grad)

    def last_failure(self):
        return self.last.last_failure() if self.last is not None else ""

    def failed_on_data_dependent_shape(self):
        return False  # no fallback ops in a dynamic program


class _Failed:
    """The forward program failed: apply() returns this (a non-tensor) instead of outputs."""


_FAILED = _Failed()


class SegmentFunction(torch.autograd.Function):
    """One compiled segment of a training step (see the module docstring)."""

    @staticmethod
    def forward(ctx, runner, full, *grad_inputs):
        rng = torch.random.get_rng_state() if runner.replay is not None else None  # before the program draws
        out = runner.forward.run(full)
        if out is False:
            return _FAILED
        ctx.runner = runner
        ctx.check = runner.check.bind(runner, full) if runner.check is not None else None
        ctx.replay, runner.replay = runner.replay, None
        if ctx.replay is not None:
            ctx.full = full
            ctx.versions = [t._version if isinstance(t, torch.Tensor) else None for t in full]
            ctx.rng = rng
        ctx.set_materialize_grads(False)
        # Saved values that are outputs, and saved inputs, go through save_for_backward (autograd
        # then checks they were not changed in place before the backward); the others exist only
        # for the backward, which drops each one after its last use (see backward).
        n = runner.n_outputs
        ctx.save_for_backward(*[out[p] for p in runner.saved_positions if p < n],
                              *[full[i] for i in runner.saved_inputs])
        ctx.intermediates = [out[p] for p in runner.saved_positions if p >= n]
        outputs = out[:n]
        differentiable = set(runner.differentiable)
        ctx.mark_non_differentiable(*[t for j, t in enumerate(outputs) if j not in differentiable])
        _counters.bump("compiled_forward_calls")
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        runner = ctx.runner
        if torch.is_grad_enabled():
            # create_graph=True: the compiled backward is not differentiable itself.
            return _eager_double_backward(ctx, grads)
        tangents = []
        for p in runner.differentiable:
            g = grads[p]
            if g is None:
                shape, dtype, device = runner.output_meta[p]
                g = torch.zeros(shape, dtype=dtype, device=device)
            elif not g.is_contiguous():
                g = g.contiguous()  # the backward was compiled for contiguous tangents
            tangents.append(g)
        n = runner.n_outputs
        kept = iter(ctx.saved_tensors)
        intermediates = iter(ctx.intermediates)
        saved = [next(intermediates) if p >= n else next(kept) for p in runner.saved_positions]
        leaves = saved + list(kept) + tangents
        consumable = []
        if not torch._C._autograd._get_current_graph_task_keep_graph():
            # Without retain_graph nothing reads them again: the backward frees each one after
            # its last reader, as eager's backward frees saved tensors node by node.
            ctx.intermediates = None
            del intermediates
            consumable = [k for k, p in enumerate(runner.saved_positions) if p >= n]
            saved = None
        out = runner.backward.run(leaves, consumable) if consumable else runner.backward.run(leaves)
        if out is False:
            raise RuntimeError(f"kiln: the compiled backward failed: {runner.backward.last_failure()}")
        _counters.bump("compiled_backward_calls")
        result = [None, None]
        given = [grads[p] is not None for p in runner.differentiable]
        for _, pos in runner.grad_leaves:
            # an input reached only through outputs autograd gave no gradient gets None, as in
            # eager (a gradient made from no tangent at all, zeros_like(grad), is kept)
            deps = runner.gradient_tangents[pos]
            used = not deps or any(given[t] for t in deps)
            result.append(out[runner.gradient_positions[pos]] if used else None)
        if not all(given) and ctx.replay is not None and not runner.has_mutations and \
                any(g is not None and not bool(torch.isfinite(g).all()) for g in result[2:]):
            # Outputs without a gradient took zeros: exact, unless the backward of such an output
            # meets inf or NaN (0 * inf), which eager never computes (it skips that path). Such
            # a call gets eager's gradients from an eager replay, as a double backward does.
            return _eager_double_backward(ctx, grads, create_graph=False)
        if ctx.check is not None:
            ctx.check(grads, result[2:])
        return tuple(result)


def _eager_double_backward(ctx, grads, create_graph=True):
    """A backward with create_graph=True (double backward): the compiled backward is not itself
    differentiable, so the call is replayed eagerly (the function on the same arguments, the RNG
    as it was before the compiled forward drew from it) and autograd differentiates that, with
    create_graph. Not possible, and a clear error, where the replay would differ from the call:
    it wrote arguments or buffers (batch norm's running statistics would move twice), an
    argument changed in place since, or it is a segment of a trace with graph breaks."""
    from ._flatten import flatten
    runner = ctx.runner
    what = ("double backward (create_graph=True) through a kiln-compiled function" if create_graph else
            "a backward with outputs that got no gradient met inf or NaN")
    if ctx.replay is None or runner.has_mutations:
        why = "it writes arguments or buffers" if runner.has_mutations else "it has graph breaks"
        raise RuntimeError(f"kiln: {what} cannot replay the call eagerly ({why}); compile it with backend='eager' "
                           "where higher-order gradients are needed")
    if any(v is not None and t._version != v for t, v in zip(ctx.full, ctx.versions)):
        raise RuntimeError(f"kiln: {what}: an argument or parameter was modified in place since the call, so it "
                           "cannot be replayed eagerly")
    _counters.record_eager(f"autograd: {what}: its gradient was computed by replaying the call eagerly")
    fn, args, kwargs = ctx.replay
    state = torch.random.get_rng_state()
    torch.random.set_rng_state(ctx.rng)
    try:
        with torch.enable_grad():
            result = fn(*args, **kwargs)
    finally:
        torch.random.set_rng_state(state)
    leaves = []
    flatten(result, leaves)
    outputs = {}
    for k, spec in enumerate(runner.out_specs):
        if spec[0] == "graph":
            outputs.setdefault(spec[1], leaves[k])
    pairs = [(outputs[p], grads[p]) for p in runner.differentiable
             if grads[p] is not None and p in outputs and outputs[p].requires_grad]
    inputs = [ctx.full[i] for i, _ in runner.grad_leaves]
    got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], create_graph=create_graph,
                              allow_unused=True) if pairs else [None] * len(inputs)
    return (None, None, *got)


class GradientCheck:
    """KILN_CHECK=1 for a call that needs gradients: eager's outputs and autograd graph for the
    same inputs (_accuracy._training_reference), compared in the compiled backward with eager's
    gradients for the same output gradients. `pending`: the reference of the call about to run."""

    pending = None

    def __init__(self, compiled, want_leaves, ref_arg_leaves, args, kwargs):
        self.compiled, self.want_leaves, self.ref_arg_leaves = compiled, want_leaves, ref_arg_leaves
        self.args, self.kwargs = args, kwargs

    def bind(self, runner, full):
        """The check of one call: which eager output each differentiable output is, and which
        eager leaf each gradient is for."""
        outputs = {}
        results = len(self.want_leaves)
        for k, spec in enumerate(runner.out_specs[:results]):
            if spec[0] == "graph" and spec[1] not in outputs:
                outputs[spec[1]] = self.want_leaves[k]
        # Tensors the call stored in argument containers (after the result's specs) have no
        # eager counterpart here: gradients that flow in through them are not compared.
        stored = {spec[1] for spec in runner.out_specs[results:] if spec[0] == "graph"} - set(outputs)
        n = len(self.ref_arg_leaves)
        inputs = [self.ref_arg_leaves[i] if i < n else full[i] for i, _ in runner.grad_leaves]
        return lambda grads, got: self.compare(runner, outputs, inputs, grads, got, stored)

    def compare(self, runner, outputs, inputs, grads, got, stored=()):
        from ._accuracy import AccuracyError, _first_difference, reproducer
        if any(grads[p] is not None for p in stored):
            return
        pairs = [(outputs[p], grads[p]) for p in runner.differentiable
                 if grads[p] is not None and p in outputs and outputs[p].requires_grad]
        if not pairs:
            return
        want = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True,
                                   retain_graph=True)
        want = [torch.zeros_like(x) if w is None else w for w, x in zip(want, inputs)]
        got = [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]
        diff = _first_difference(tuple(got), tuple(want))
        if diff is None:
            return
        index, what = diff
        leaf = runner.grad_leaves[index][0]
        raise AccuracyError(
            f"kiln: the compiled backward of {getattr(self.compiled, '__name__', 'fn')} diverges from eager's "
            f"gradient (KILN_CHECK=1): gradient of leaf {leaf}: {what.replace('output', 'gradient', 1)}\n"
            f"backward graph:\n{runner.backward_graph}\n"
            f"reproducer of the forward:\n{reproducer(self.compiled._fn, self.args, self.kwargs)}")
