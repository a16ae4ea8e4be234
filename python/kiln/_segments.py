"""Graph breaks as a tree of compiled segments.

A value read into Python (`.item()`, `bool(t)`, `int(t)`, `.tolist()`), or a result whose
shape is data (Note [Shape reads] in _trace.py: nonzero, `x[mask]`), splits a trace into
segments: straight-line graphs, each ending with the reads that decide what Python does next.
The segments of all traces of one guarded specialisation form a tree: a node is a compiled
segment, its children are keyed by the values read at its end. A call runs the root, reads the
values from its outputs, follows the child with that key, and so on to a leaf, which holds the
result's layout. A key not seen before (a branch never taken, a new trip count) runs the whole
function again under the tracer, and the new path is merged into the tree. Nothing is reused on
a value that was not checked: every read value is a key.

Segments of different traces at the same place in the tree are the same graph (the same code
ran on the same guarded inputs and read values); their outputs may differ (later segments may
need more of them), so a merged node outputs the union and is recompiled.
"""

from . import _C

DEEP_MISS = object()  # a read value with no compiled continuation: trace again


class NondeterministicTrace(Exception):
    """Two traces disagree on a segment they should share (the function is not deterministic)."""


class SegNode:
    def __init__(self, seg, text, fallbacks):
        self.builder = seg.builder
        self.text = text
        self.needed = list(seg.needed)
        self.carried = list(seg.carried)
        self.reads = [(fn, vids, out_vids) for fn, vids, _, out_vids in seg.reads]
        self.fresh = set(seg.fresh)  # outputs never returned as views of arguments
        self.fallbacks = fallbacks
        self.children = {}
        self.result = None   # ((out_specs, mutations), result_spec, replay) where the function returns
        self.program = None
        self.native = None
        self.joint = None     # training: the segment's joint graph (see Tree.training)
        self.flows = set(seg.flows)  # needed values that are computed with, not only read
        self.training = None  # training: the _autograd.TrainingPrograms once compiled


class Tree:
    """The compiled segments of one guarded specialisation."""

    def __init__(self, guards, leaf_count, grad, device=None, training=False):
        self.device = device  # the CUDA device the segments compile for, or None (CPU)
        # A training step: each segment is its own autograd node, its backward recorded from the
        # trace that (re)made it (Note [Training across graph breaks]).
        self.training = training
        self.guards = guards
        self.leaf_count = leaf_count
        self.grad = grad
        self.root = None
        self.paths = 0
        self.breaks = []  # (reason, location) of the reads met while tracing
        self.failed = None  # the runner of the segment whose last call failed

    def merge(self, tracer, out_specs, result_spec):
        """Adds a trace's path; returns the nodes that must be (re)compiled."""
        dirty = []
        for b in tracer.breaks:
            if b not in self.breaks:
                self.breaks.append(b)
        node, parent, key = self.root, None, None
        last = len(tracer.segments) - 1
        for d, seg in enumerate(tracer.segments):
            for j, vid in enumerate(seg.carried_vids):
                seg.builder.set_input_index(vid, self.leaf_count + j)
            text = seg.builder.print()
            if node is None:
                node = SegNode(seg, text, tracer.fallbacks)
                if parent is None:
                    self.root = node
                else:
                    parent.children[key] = node
                dirty.append(node)
            else:
                if node.text != text:
                    raise NondeterministicTrace(f"segment {d} differs from an earlier trace of the same path")
                grown = [v for v in seg.needed if v not in node.needed]
                if grown or not seg.fresh <= node.fresh or not seg.flows <= node.flows:
                    node.needed += grown
                    node.fresh |= seg.fresh
                    node.flows |= seg.flows
                    dirty.append(node)
            if self.training and node in dirty:
                self._capture_segment_backward(tracer, d, node)
            if d < last:
                key = tuple(k for _, _, k, _ in seg.reads)
                parent, node = node, node.children.get(key)
            else:
                node.result = (out_specs, *result_spec)  # ((specs, mutations), result spec, replay)
        self.paths += 1
        return dirty

    def _capture_segment_backward(self, tracer, d, node):
        """Note [Training across graph breaks]
        Segment d of this trace becomes node's graph with its backward recorded into it: the
        backward of the node's outputs (every value later segments or the result need, over all
        traces) with respect to the segment's inputs, the leaves it reads and the values carried
        in from earlier segments. Each compiled segment is then one autograd node whose inputs
        are the outputs of the nodes before it, so gradients flow across the breaks as through
        eager's graph. What autograd.grad cannot give per segment (a tensor reaching a segment
        directly and through a carried value, whose gradient it would count twice; an output
        another path needed whose tensor this trace no longer holds) raises Unsupported, and the
        specialisation runs eagerly with the reason."""
        from ._backward_capture import capture_joint, check_segment_independence, differentiable
        from ._trace import CaptureFailed
        seg = tracer.segments[d]
        missing = [v for v in node.needed if v not in seg.out_tensors]
        if missing:
            raise _C.Unsupported("autograd: a segment's output needed by another path of the trace tree is not "
                                 "available to record its backward")
        seg.needed = list(node.needed)
        grad_inputs = [(i, tracer.leaves[i]) for i in sorted(seg.leaf_vids)]
        grad_inputs += [(self.leaf_count + j, t) for j, t in enumerate(seg.carried_tensors)]
        try:
            check_segment_independence([t for _, t in grad_inputs if differentiable(t)],
                                       [t for t in seg.carried_tensors if differentiable(t)])
            tracer.current = d
            joint = capture_joint(tracer, seg, {v: seg.out_tensors[v] for v in node.needed},
                                  self.leaf_count + len(seg.carried) + 1, grad_inputs, node.flows | seg.flows)
        except CaptureFailed as e:
            raise _C.Unsupported(e.reason) from None
        finally:
            tracer.current = None
        if isinstance(joint, CaptureFailed):
            raise _C.Unsupported(joint.reason)
        node.builder = seg.builder
        node.joint = joint

    def compile(self, node, debug_dir=""):
        """(Re)compiles one node for its current outputs."""
        node.builder.set_outputs(node.needed + (node.joint["grad_vids"] if node.joint is not None else []))
        node.builder.set_output_leaves([_C.FRESH_OUTPUT if v in node.fresh else -1 for v in node.needed])
        if node.joint is not None:
            self._compile_training(node, debug_dir)
            return
        if self.device is not None and self.device.type == "cuda":
            from . import _cuda
            node.program = _cuda.compile_cuda_entry(node.builder, self.device, debug_dir, node.fallbacks)
        else:
            node.program = _C.compile_graph(node.builder, debug_dir)
        guards = self._guards(node)
        if getattr(node.program, "target", "cpu") == "cuda":
            from . import _cuda
            node.native = _cuda.CudaEntry(guards, node.program)
        else:
            node.native = _C.Entry(guards, node.program, list(node.fallbacks))

    def _guards(self, node):
        if node is self.root:
            return self.guards
        guards = _C.GuardSet()  # inputs are the root's (checked) and this tree's own outputs
        guards.set_leaf_count(self.leaf_count + len(node.carried))
        guards.set_grad_mode(self.grad)
        return guards

    def _compile_training(self, node, debug_dir):
        from . import _autograd
        joint, guards = node.joint, self._guards(node)
        if self.device is not None and self.device.type == "cuda":
            from . import _cuda
            tp, forward, backward = _cuda.compile_cuda_training(node.builder, len(node.needed), joint, self.device,
                                                                node.fallbacks, debug_dir)
            node.program, backward_program = forward, backward
        else:
            tp = _C.compile_training(node.builder, len(node.needed), joint["tangents"], joint["backward_start"],
                                     debug_dir=debug_dir)
            forward = _C.Entry(guards, tp.forward, list(node.fallbacks), lazy_outputs=True)
            backward = _C.Entry(_C.GuardSet(), tp.backward, list(node.fallbacks), lazy_outputs=True)
            node.program, backward_program = tp.forward, tp.backward
        node.training = _autograd.TrainingPrograms(tp, node.program, backward_program)
        node.native = _autograd.TrainingRunner(guards, tp, forward, backward, joint["differentiable"],
                                               joint["grad_leaves"], joint["output_meta"], tp.backward_graph)

    def run(self, full, grad):
        """(outputs per segment, leaf node), or None (the root's guards fail), False (redo the
        call eagerly) or DEEP_MISS."""
        node, outs = self.root, []
        while True:
            carried = [outs[k][vid] for k, vid in node.carried]
            res = node.native(full + carried if carried else full, grad)
            if res is False:
                self.failed = node.native  # its last_failure() says why
            if res is None or res is False:
                return res
            outs.append(dict(zip(node.needed, res)))
            if not node.reads:
                return outs, node
            here = outs[-1]
            key = []
            for fn, vids, out_vids in node.reads:
                value = fn(*[here[v] for v in vids])
                if out_vids is not None:  # a shape read: later segments take its results
                    here.update(zip(out_vids, value if isinstance(value, (tuple, list)) else (value,)))
                key.append(_read_key(value))
            key = tuple(key)
            child = node.children.get(key)
            if child is None or child.native is None:  # unseen, or still being compiled
                return DEEP_MISS
            node = child

    def nodes(self):
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            if n is None:
                continue
            out.append(n)
            stack.extend(n.children.values())
        return out

    def programs(self):
        return [n.program for n in self.nodes() if n.program is not None]

    def backward_programs(self):
        """The backward programs of a training tree's segments."""
        return [n.training.backward for n in self.nodes() if n.training is not None]

    def fallbacks(self):
        """The eager ops of every path traced, once each (the segments of one trace share its
        table)."""
        seen = {}
        for n in self.nodes():
            for fb in n.fallbacks:
                seen.setdefault(id(fb), fb)
        return list(seen.values())


def _read_key(value):
    from ._trace import read_key
    return read_key(value)
