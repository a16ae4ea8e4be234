"""kiln on blocks of real architectures (benchmarks/models.py), inference mode.

For every block, under torch.no_grad() and .eval():
  * the first call captures (and returns eager's result), the second call is a cache hit;
  * compiled results match eager on two different random inputs (float32, rtol=atol=1e-4);
  * kiln.explain: graphs, graph breaks, fallback ops are recorded (record_property, and printed
    with -s); every block compiles at least one kernel (none has an inherent graph break), and
    falls back only on ops from its known list (a new fallback is a regression).
Full benchmark sizes (bugs can depend on sizes: vector tails, thread splits); ~15 s on 2 cores.
"""

import collections
import copy
import os
import sys

import pytest
import torch

import kiln

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import models  # noqa: E402

RTOL = ATOL = 1e-4

# Ops each block may run eagerly inside its compiled program (fallback nodes), today. kiln
# gaining a lowering shrinks the real set (fine); an op outside the list is a regression.
KNOWN_FALLBACKS = {
    "mlp": {"aten.addmm.default"},
    "attention": {"aten.addmm.default", "aten.bmm.default"},
    "convnext": {"aten.convolution.default", "aten.addmm.default"},
    "swin": {"aten.roll.default", "aten.addmm.default", "aten.bmm.default", "aten.index.Tensor"},
    "decoder_kv": {"aten.mm.default", "aten.cat.default", "aten.bmm.default", "aten.masked_fill.Scalar"},
    "decoder_prefill": {"aten.mm.default", "aten.cat.default", "aten.index_copy.default", "aten.index_copy_.default",
                        "aten._scaled_dot_product_flash_attention_for_cpu.default"},
    "dlrm": {"aten.addmm.default", "aten._embedding_bag.default", "aten.cat.default", "aten.bmm.default",
             "aten.index.Tensor"},
    "lstm": {"aten.addmm.default", "aten.split.Tensor", "aten.stack.default"},
    "whisper_frontend": {"aten.convolution.default"},
    "mbconv": {"aten.convolution.default"},
}

# Blocks whose compiled output differs from eager (kiln bugs): name -> reason. Marked
# xfail(strict=True) until fixed. None at present.
KNOWN_BUGS = {}


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat(v)]
    return []


def _assert_close(actual, expected, what):
    a, e = _flat(actual), _flat(expected)
    assert len(a) == len(e), f"{what}: {len(a)} outputs, eager has {len(e)}"
    for i, (x, y) in enumerate(zip(a, e)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what} output {i}: {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what} output {i}: {m}")


def test_every_block_is_listed():
    assert set(models.NAMES) == set(KNOWN_FALLBACKS)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS else n
    for n in models.NAMES])
def test_block(name, record_property):
    torch.set_grad_enabled(False)
    m = models.build(name)
    assert not m.training
    x0, x1 = m.make_inputs(seed=0), m.make_inputs(seed=1)
    # eager reference on a copy: blocks with state (decoder_prefill's static KV cache, written
    # in place) see the same call sequence on both sides; the states are compared at the end
    ref_m = copy.deepcopy(m)
    ref0 = ref_m(*x0)
    ref_m(*x0)
    ref1 = ref_m(*x1)

    f = kiln.compile(m)
    first = f(*x0)                                   # capture + compile (returns eager's result)
    _assert_close(first, ref0, f"{name} (capturing call)")
    c = kiln.counters()
    assert c["captures"] == 1 and c["eager_calls"] == 0, c
    _assert_close(f(*x0), ref0, f"{name} (compiled)")
    _assert_close(f(*x1), ref1, f"{name} (compiled, other inputs)")   # last: its state is compared
    c = kiln.counters()
    assert c["captures"] == 1 and c["cache_hits"] == 2 and c["recompiles"] == 0, c
    assert c["eager_calls"] == 0 and c["graph_breaks"] == 0, c["reasons"]
    for key, want in ref_m.state_dict().items():
        torch.testing.assert_close(m.state_dict()[key], want, rtol=RTOL, atol=ATOL,
                                   msg=lambda msg: f"{name}: state {key} after the calls: {msg}")
    n_kernels = len(kiln.kernels(f))
    assert n_kernels >= 1, f"{name}: no kernel compiled (wholly eager): {c['reasons']}"

    ex = kiln.explain(m, *x0)
    fb = collections.Counter(op for op, _ in ex.fallback_ops)
    summary = (f"{name}: graphs={ex.graph_count} breaks={len(ex.graph_breaks)} kernels={n_kernels} "
               f"fallbacks=" + ", ".join(f"{op.replace('aten.', '')} x{n}" for op, n in sorted(fb.items())))
    print("\n" + summary)
    record_property("graphs", ex.graph_count)
    record_property("graph_breaks", len(ex.graph_breaks))
    record_property("kernels", n_kernels)
    record_property("fallback_ops", dict(fb))
    assert ex.graph_count >= 1 and not ex.graph_breaks, str(ex)
    unexpected = set(fb) - KNOWN_FALLBACKS[name]
    assert not unexpected, f"{name}: new fallback ops {sorted(unexpected)}\n{summary}"
    assert fb == collections.Counter(c["fallback_op_counts"]), (fb, c["fallback_op_counts"])
