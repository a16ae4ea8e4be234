"""Process-wide counters: what kiln compiled, reused, and ran eagerly, and why."""

import collections

_counts = collections.Counter()
_reasons = collections.Counter()     # fallback / break reason -> times met
_fallback_ops = collections.Counter()  # op -> times it forced eager execution


def bump(key, n=1):
    _counts[key] += n


def record_failure(err):
    """Counts a capture failure (a graph break or an op kiln cannot lower) with its reason."""
    if err.kind == "break":
        _counts["graph_breaks"] += 1
    else:
        _counts["fallback_ops"] += 1
        if err.op:
            _fallback_ops[err.op] += 1
    _reasons[err.reason] += 1


def record_fallback_op(op):
    """Counts an op kiln runs eagerly inside a compiled program (a fallback node)."""
    _counts["fallback_ops"] += 1
    _fallback_ops[op] += 1
    _reasons[f"{op}: no lowering; runs eagerly inside the compiled program"] += 1


def record_eager(reason):
    _counts["eager_calls"] += 1
    _reasons[reason] += 1


def snapshot():
    out = {k: _counts.get(k, 0) for k in
           ("captures", "cache_hits", "recompiles", "graph_breaks", "fallback_ops", "eager_calls",
            "eager_calls_while_compiling", "compiled_forward_calls", "compiled_backward_calls",
            "dynamic_compiles")}
    out["fallback_op_counts"] = dict(_fallback_ops)
    out["reasons"] = dict(_reasons)
    return out


def reset():
    _counts.clear()
    _reasons.clear()
    _fallback_ops.clear()
