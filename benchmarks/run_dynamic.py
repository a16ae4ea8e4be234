"""kiln dynamic-shape benchmark: functions whose sizes change from call to call.

    PYTHONPATH=python .venv/bin/python benchmarks/run_dynamic.py [--threads 2] [--no-inductor] [--only NAME]

Each workload (dynamic_workloads.py) runs its calls -- 16 sizes, then the same 16 again, or a
decode loop's 32 steps -- once per side, each side in a fresh process with cold caches: eager,
torch.compile (dynamic=None, its default) and torch.compile(dynamic=True), kiln (dynamic=None)
compiling on the calling thread, and kiln with background=True (calls run eagerly while their
program compiles).
Columns: kiln's captures (of which dynamic programs) and calls it ran eagerly, then per side the
total wall time of the run (compiles included) over eager's with its compiles (torch.compile:
unique graphs; kiln: captures), and WRONG where a result differed from eager's.
Then per-call times at three sizes after the run: eager, torch.compile, kiln and kiln
specialised on that size (dynamic=False), in one process, interleaved.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_env(__file__)  # the malloc environment; before importing torch

SIDES = ["eager", "tc", "tc_dynamic", "kiln", "kiln_bg"]


def _build(name):
    import dynamic_workloads
    built = dynamic_workloads.BY_NAME[name].build()
    fn, calls, steady = built[:3]
    reset = built[3] if len(built) > 3 else (lambda: None)
    return fn, calls, steady, reset


def _compiled(side, fn, **kw):
    import torch
    if side == "eager":
        return fn
    if side.startswith("tc"):
        return torch.compile(fn, dynamic=True if side == "tc_dynamic" else None)
    import kiln
    return kiln.compile(fn, background=side == "kiln_bg", **kw)


def child(side, name, threads):
    """One side of one workload in this (fresh) process: prints a JSON line."""
    import time
    import torch
    harness.set_threads(threads)
    fn, calls, steady, reset = _build(name)
    with torch.no_grad():
        reset()
        expected = [fn(*a).clone() for a in calls]
        reset()
        if side.startswith("kiln"):
            import kiln
            kiln.reset()
        f = _compiled(side, fn)
        t0 = time.perf_counter()
        outs = [f(*a) for a in calls]
        total = time.perf_counter() - t0
        if side == "kiln_bg":
            import kiln
            kiln.wait()  # the steady timings below run the programs
        ok = all(torch.allclose(o, e, rtol=1e-4, atol=1e-4, equal_nan=True) for o, e in zip(outs, expected))
        out = {"total_s": total, "ok": ok}
        if side.startswith("kiln"):
            import kiln
            c = kiln.counters()
            out.update(captures=c["captures"], dynamic=c["dynamic_compiles"], eager_calls=c["eager_calls"],
                       while_compiling=c["eager_calls_while_compiling"],
                       reasons=sorted(c["reasons"].items(), key=lambda kv: -kv[1])[:2])
        elif side.startswith("tc"):
            from torch._dynamo.utils import counters
            out["compiles"] = int(counters["stats"]["unique_graphs"])
        if steady is not None and side != "kiln_bg":
            per = {}
            for i in steady:
                calls_i = {side: (lambda a=calls[i]: f(*a))}
                if side == "kiln":
                    fixed = _compiled("kiln", fn, dynamic=False)
                    fixed(*calls[i])
                    calls_i["kiln_fixed"] = lambda a=calls[i]: fixed(*a)
                med, _ = harness.time_interleaved(calls_i, repeats=7)
                per[str(i)] = med
            out["steady"] = per
    print(json.dumps(out))


def main():
    ap = harness.fresh_process_args(__doc__, "workloads")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.threads)
    import dynamic_workloads
    harness.print_cold_header(args.threads)
    sides = [s for s in SIDES if not (args.no_inductor and s.startswith("tc"))]
    rows = []
    print(f"{'workload':20s} {'kiln compiles':>13s} {'eager calls':>11s} " +
          " ".join(f"{s + ' total':>16s}" for s in sides[1:]) + "  (total wall time over eager's; compiles included)")
    for w in dynamic_workloads.WORKLOADS:
        if args.only not in w.name:
            continue
        res = {s: harness.run_cold_child(__file__, s, w.name, args.threads, "kiln-dynamic-") for s in sides}
        eager = res["eager"]["total_s"]
        k = res["kiln"]
        cells = []
        for s in sides[1:]:
            r = res[s]
            n = f" ({r['compiles']}c)" if "compiles" in r else f" ({r['captures']}c)" if "captures" in r else ""
            cells.append(f"{r['total_s'] / eager:9.2f}x{n}{'' if r['ok'] else ' WRONG'}")
        print(f"{w.name:20s} {k['captures']:>7d} ({k['dynamic']} dyn) {k['eager_calls']:>11d} " +
              " ".join(f"{c:>16s}" for c in cells) + f"   eager {eager * 1e3:.1f} ms")
        if k["reasons"]:
            print(f"{'':20s} kiln eager because: {k['reasons'][0][0][:110]}")
        rows.append({"workload": w.name, **{s: res[s] for s in sides}})
    print("\nper call at three sizes after the run (ms; kiln_fixed: kiln specialised on that size):")
    for row in rows:
        steady = row["eager"].get("steady")
        if not steady:
            continue
        for i in steady:
            vals = {s: row[s]["steady"][i][s] for s in sides if s != "kiln_bg"}
            vals["kiln_fixed"] = row["kiln"]["steady"][i]["kiln_fixed"]
            e = vals["eager"]
            print(f"  {row['workload']:20s} call #{i:>2s}: " + "  ".join(
                f"{s} {v * 1e3:.3f} ({e / v:.2f}x)" for s, v in vals.items()) +
                f"   kiln/kiln_fixed {vals['kiln'] / vals['kiln_fixed']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
