"""kiln.explain: what kiln makes of a function on given arguments."""

from ._compile import CompiledFunction


class Explanation:
    """Result of kiln.explain: .graph_count, .graph_breaks [(reason, location)], .fallback_ops
    [(op, reason)], .guards [text], .replays [the argument containers each entry writes after a
    call], .dynamic [the symbol and sizes of each dynamic program], .graphs [text], .kernels [name], .matmuls [text: the BLAS
    steps, with how BLAS reads each operand], .training [one dict per compiled training step:
    joint_graph, partition (what the forward saves and the backward recomputes), saved_bytes,
    recomputed, forward_kernels, backward_kernels]; str() reads well."""

    def __init__(self, entries):
        self.graphs = [e.program.graph for e in entries if e.program is not None]
        self.graphs += [p.graph for e in entries if getattr(e, "tree", None) is not None for p in e.tree.programs()]
        self.graph_count = len(self.graphs)
        self.graph_breaks = [(e.failure.reason, e.failure.location) for e in entries
                             if e.failure is not None and e.failure.kind == "break"]
        self.graph_breaks += [b for e in entries if getattr(e, "tree", None) is not None for b in e.tree.breaks]
        self.fallback_ops = [(e.failure.op or "(whole function)", e.failure.reason) for e in entries
                             if e.failure is not None and e.failure.kind != "break"]
        self.fallback_ops += [(str(fb), "no lowering: runs eagerly inside the compiled program")
                              for e in entries for fb in getattr(e, "fallbacks", [])]
        self.fallback_ops += [(str(fb), "no lowering: runs eagerly inside a compiled segment")
                              for e in entries if getattr(e, "tree", None) is not None for fb in e.tree.fallbacks()]
        self.guards = [g for e in entries for g in e.guards.describe()]
        # One program for every size (Note [Dynamic sizes]): the symbol, where it was
        # read, and the sizes it serves.
        self.dynamic = [e.dynamic.describe for e in entries if getattr(e, "dynamic", None) is not None]
        # Argument containers written after each compiled call (Note [Argument containers]).
        self.replays = [e.replay.describe() for e in entries if getattr(e, "replay", None) is not None]
        programs = [e.program for e in entries if e.program is not None]
        programs += [p for e in entries if getattr(e, "tree", None) is not None for p in e.tree.programs()]
        self.kernels = [k["name"] for p in programs for k in p.kernels()]
        self.matmuls = [g for p in programs for g in getattr(p, "gemms", [])]
        self.training = []
        for e in entries:
            t = getattr(e, "training", None)
            if t is None:
                continue
            self.training.append({"joint_graph": t.joint_graph, "partition": t.partition,
                                  "saved_bytes": t.saved_bytes, "recomputed": t.recomputed,
                                  "forward_kernels": [k["name"] for k in t.forward.kernels()],
                                  "backward_kernels": [k["name"] for k in t.backward.kernels()]})
            self.graphs.append(t.backward.graph)
            self.kernels += [k["name"] for k in t.backward.kernels()]
            self.matmuls += t.backward.gemms
        self.graph_count = len(self.graphs)

    def __str__(self):
        lines = [f"graphs: {self.graph_count}", f"graph breaks: {len(self.graph_breaks)}"]
        lines += [f"  - {r}\n    at {loc}" for r, loc in self.graph_breaks]
        lines.append(f"fallbacks: {len(self.fallback_ops)}")
        lines += [f"  - {op}: {r}" for op, r in self.fallback_ops]
        lines.append(f"kernels: {', '.join(self.kernels) or '(none)'}")
        if self.matmuls:
            from . import _C
            lines.append(f"matrix products (BLAS: {_C.blas_library()}):")
            lines += [f"  - {g}" for g in self.matmuls]
        lines += [f"dynamic program: {d}" for d in self.dynamic]
        lines += [f"after each call, replays the changes to its arguments {r}" for r in self.replays]
        lines.append("guards:")
        lines += [f"  {g}" for g in self.guards]
        for i, t in enumerate(self.training):
            lines.append(f"training step {i}: forward kernels {', '.join(t['forward_kernels']) or '(none)'}; "
                         f"backward kernels {', '.join(t['backward_kernels']) or '(none)'}")
            lines.append(f"  saved for the backward ({t['saved_bytes']} bytes), recomputed ({t['recomputed']}):")
            lines += ["  " + l for l in t["partition"].splitlines()]
            lines.append("  joint graph (forward, then autograd's backward from the tangents):")
            lines += ["    " + l for l in t["joint_graph"].splitlines()]
        for i, g in enumerate(self.graphs):
            lines.append(f"graph {i}:")
            lines += ["  " + l for l in g.splitlines()]
        return "\n".join(lines)

    __repr__ = __str__


def explain(fn, *args, **kwargs):
    """Captures `fn` on these arguments with a fresh cache and reports what kiln did."""
    from ._module import CompiledModule
    import torch
    if isinstance(fn, CompiledModule):
        fn = fn._kiln
    if isinstance(fn, CompiledFunction):
        fresh = CompiledFunction(fn._fn, module=fn._module)
    elif isinstance(fn, torch.nn.Module):
        fresh = CompiledFunction(fn.forward, module=fn)
    else:
        fresh = CompiledFunction(fn)
    fresh(*args, **kwargs)
    return Explanation(fresh.entries())
