"""kiln dynamic training benchmark: training steps whose batch or sequence length changes.

    PYTHONPATH=python .venv/bin/python benchmarks/run_dynamic_training.py [--threads 2] [--no-inductor] [--only NAME]

Each workload trains a module for 32 steps (16 sizes, then the same 16 again: forward, MSE loss,
backward), once per side, each side in a fresh process with cold kiln and Inductor caches:
eager, torch.compile (its default dynamic=None), kiln (dynamic=None: a dynamic training step
from the second size on, runtime/dynamic_training.h) and kiln with dynamic=False (a program per
size until KILN_CACHE_LIMIT, then eager). Columns: the total wall time of the 32 steps
(compiles included) over eager's, kiln's captures and steps run eagerly, then the steady time
of one step at 64 rows / tokens (median of 20) over eager's, and the process's peak RSS. Every
side's losses and gradients are checked against eager's.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_env(__file__)  # the malloc environment; before importing torch

SIDES = ["eager", "tc", "kiln", "kiln_static"]
SIZES = [16, 24, 1, 7, 33, 64, 3, 128, 5, 48, 96, 2, 17, 80, 11, 40]


def _mlp():
    import torch
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256),
                            torch.nn.LayerNorm(256))
    return m, [(torch.randn(n, 256), torch.randn(n, 256)) for n in SIZES * 2], (torch.randn(64, 256),
                                                                                 torch.randn(64, 256))


def _gpt_seqlen():
    import torch
    import dynamic_workloads
    torch.manual_seed(0)
    m = dynamic_workloads._GptBlock()
    return m, [(torch.randn(2, n + 8, 128), torch.randn(2, n + 8, 128)) for n in SIZES * 2], (
        torch.randn(2, 64, 128), torch.randn(2, 64, 128))


WORKLOADS = {"mlp_batch": (_mlp, "MLP 256-1024-256 + LayerNorm over 16 batch sizes (1..128), twice"),
             "gpt_block_seqlen": (_gpt_seqlen, "GPT block (C = 128, 4 heads), batch 2, over 16 sequence "
                                               "lengths (9..136), twice")}


def child(side, name, threads):
    """One side of one workload in this (fresh) process: prints a JSON line."""
    import time
    import torch
    import torch.nn.functional as F
    harness.set_threads(threads)
    make, _ = WORKLOADS[name]
    model, steps, steady = make()
    ref = make()[0]

    def grads(m):
        return [p.grad.clone() for p in m.parameters()]

    expected = []
    for x, y in steps:  # eager's losses and gradients, on a copy
        loss = F.mse_loss(ref(x), y)
        loss.backward()
        expected.append((loss.detach(), grads(ref)))
        ref.zero_grad(set_to_none=True)
    if side == "tc":
        f = torch.compile(model)
    elif side.startswith("kiln"):
        import kiln
        kiln.reset()
        f = kiln.compile(model, dynamic=False if side == "kiln_static" else None)
    else:
        f = model
    ok = True
    total = 0.0
    for (x, y), (le, ge) in zip(steps, expected):
        t0 = time.perf_counter()
        loss = F.mse_loss(f(x), y)
        loss.backward()
        total += time.perf_counter() - t0
        ok = ok and harness.check_close(loss.detach(), le) is None and all(
            harness.check_close(p.grad, g, rtol=1e-3, atol=1e-4) is None for p, g in zip(model.parameters(), ge))
        model.zero_grad(set_to_none=True)
    out = {"total_s": total, "ok": bool(ok)}
    if side.startswith("kiln"):
        import kiln
        c = kiln.counters()
        out.update(captures=c["captures"], dynamic=c["dynamic_compiles"], eager_calls=c["eager_calls"])
    x, y = steady
    per = []
    for i in range(23):
        t0 = time.perf_counter()
        F.mse_loss(f(x), y).backward()
        per.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    out["steady_s"] = sorted(per[3:])[len(per[3:]) // 2]
    out["peak_rss_mb"] = harness.peak_rss() / 2**20
    print(json.dumps(out))


def main():
    ap = harness.fresh_process_args(__doc__, "workloads")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.threads)
    harness.print_cold_header(args.threads)
    sides = [s for s in SIDES if not (args.no_inductor and s == "tc")]
    for name, (_, what) in WORKLOADS.items():
        if args.only not in name:
            continue
        print(f"\n{name}: {what}")
        res = {s: harness.run_cold_child(__file__, s, name, args.threads, "kiln-dyntrain-") for s in sides}
        eager = res["eager"]
        for s in sides:
            r = res[s]
            kiln_cols = (f"  {r['captures']} captures ({r['dynamic']} dynamic), {r['eager_calls']} steps eager"
                         if "captures" in r else "")
            print(f"  {s:12s} 32 steps {r['total_s'] * 1e3:9.1f} ms = {r['total_s'] / eager['total_s']:7.2f}x eager's"
                  f"   one step at 64: {r['steady_s'] * 1e3:7.3f} ms = {eager['steady_s'] / r['steady_s']:5.2f}x eager"
                  f"   peak RSS {r['peak_rss_mb']:6.0f} MB{'' if r['ok'] else '  WRONG'}{kiln_cols}")


if __name__ == "__main__":
    sys.exit(main())
