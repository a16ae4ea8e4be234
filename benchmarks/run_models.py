#!/usr/bin/env python3
"""kiln model suite: eager vs torch.compile (Inductor, default mode) vs kiln on blocks of real
architectures (benchmarks/models.py), in inference mode (.eval(), torch.no_grad()).

    PYTHONPATH=python .venv/bin/python benchmarks/run_models.py
    PYTHONPATH=python .venv/bin/python benchmarks/run_models.py --quick --threads 2 --only swin
    ... --no-inductor --small --json '' --repeats 9 --wait-idle 30

Per block: median ms per call of each side (same thread count everywhere:
torch.set_num_threads(T) and kiln.config.set("num_threads", T)), kiln's speedups, cold compile
seconds (first call of a fresh compile: capture + compile + run), and what kiln made of the
block: graphs, graph breaks, kernels, fallback ops (name x count), and how much of kiln's time
is spent in those fallback ops (torch.profiler over a few kiln calls; each fallback node is one
eager ATen call). Then geomean speedups. Timing, machine description and the malloc environment
come from benchmarks/harness.py (shared with run.py).

Exit status 1 when kiln's output differs from eager on any block (or kiln raised).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

harness.ensure_env(__file__)   # re-execs with the malloc environment; before importing torch

import collections  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import kiln  # noqa: E402
import models  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for every side (default: os.cpu_count() = %(default)s)")
    p.add_argument("--quick", action="store_true", help="5 timed repeats instead of 15")
    p.add_argument("--small", action="store_true", help="the blocks at reduced sizes (models.build(small=True))")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="the blocks' parameters and float inputs in this dtype (default float32)")
    p.add_argument("--only", metavar="NAME_SUBSTRING", action="append",
                   help="run only blocks whose name contains this (repeatable)")
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side (default 15, --quick 5); the median is reported")
    p.add_argument("--no-profile", action="store_true",
                   help="skip measuring how much of kiln's time goes to fallback ops")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before timing each block, wait up to S seconds for other processes to stop "
                        "using the CPU (rows timed under load are marked '!' either way)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "models.json"), metavar="PATH",
                   help="write all results here (default: %(default)s); '' to skip")
    return p.parse_args()


BG_WARN = 0.15
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# kiln against eager: each half op rounds once as eager's does, but a block's products run in
# another order, so whole blocks agree to a few of the type's ulps.
CHECK_TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (5e-2, 5e-2), torch.float16: (1e-2, 1e-2)}


# ---------------------------------------------------------------------------------------------
def flat_tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_tensors(v)]
    return []


def short_op(op):
    return op.replace("aten.", "").replace(".default", "")


def fallback_profile(kf, args, fallback_ops, calls=3):
    """ms per call that kiln spends in each of its fallback ops: a fallback node is one eager
    ATen call, which torch.profiler sees (kiln's own kernels it does not). Counts the op's
    total time, ops it calls included. Returns {op: ms per call}."""
    from torch.profiler import ProfilerActivity, profile
    wanted = {op.split(".")[1] for op in fallback_ops if op.startswith("aten.")}
    kf(*args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            kf(*args)
    out = collections.Counter()
    for ev in prof.key_averages():
        op = ev.key.replace("aten::", "")
        if ev.key.startswith("aten::") and op in wanted:
            out[op] += ev.cpu_time_total / 1000.0 / calls
    return {k: round(v, 4) for k, v in out.most_common()}


def measure_block(name, small, repeats, use_inductor, profile_fallbacks, wait_idle_s, log=print,
                  dtype=torch.float32):
    m = models.build(name, small=small).to(dtype)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in m.make_inputs(seed=0))
    rtol, atol = CHECK_TOL[dtype]
    r = {"name": name}
    expected = m(*args)
    exp_flat = flat_tensors(expected)
    r["io_shapes"] = {"inputs": [list(t.shape) for t in flat_tensors(args)],
                      "outputs": [list(t.shape) for t in exp_flat]}

    # --- kiln: cold compile (first call = capture + compile; it returns eager's result), then a
    # second call that must be a cache hit and is the one checked against eager.
    kf = None
    try:
        kf, _, r["kiln_cold_s"] = harness.cold_compile("kiln", m, args)
        out2 = kf(*args)
        c = kiln.counters()
        err = harness.check_close(flat_tensors(out2), exp_flat, rtol, atol)
        r["check"] = "ok" if err is None else "FAIL"
        if err is not None:
            r["check_error"] = err
            harness.loud(f"FAIL: kiln output differs from eager for {name}\n{err}")
        try:
            nk = len(kiln.kernels(kf))
        except Exception:  # noqa: BLE001
            nk = 0
        r["kiln"] = {
            "kernels": nk,
            "captures": c["captures"], "cache_hits": c["cache_hits"], "eager_calls": c["eager_calls"],
            "graph_breaks": c["graph_breaks"],
            "fallback_ops": c["fallback_ops"],
            "fallback_op_counts": dict(sorted(c.get("fallback_op_counts", {}).items(),
                                              key=lambda kv: (-kv[1], kv[0]))),
            "reasons": c.get("reasons", {}),
        }
        ex = kiln.explain(m, *args)
        r["kiln"]["graphs"] = ex.graph_count
        r["kiln"]["explain_breaks"] = [list(b) for b in ex.graph_breaks]
        eager = c["eager_calls"] > 0 or nk == 0
        r["kiln"]["path"] = "EAGER" if eager else ("partial" if c["fallback_ops"] or c["graph_breaks"] else "fused")
        del out2
    except Exception as e:  # noqa: BLE001
        r["kiln_cold_s"] = None
        r["kiln"] = {"path": "error", "kernels": 0, "graphs": 0, "graph_breaks": 0, "fallback_op_counts": {}}
        r["kiln_error"] = f"{type(e).__name__}: {e}"
        r["check"] = "error"
        harness.loud(f"ERROR: kiln failed on {name}: {r['kiln_error']}")
        kf = None

    # --- torch.compile (Inductor default mode)
    tf = None
    if use_inductor:
        try:
            tf, _, r["tc_cold_s"] = harness.cold_compile("inductor", m, args)
            terr = harness.check_close(flat_tensors(tf(*args)), exp_flat, rtol, atol)
            r["tc_check"] = "ok" if terr is None else "differs"
        except Exception as e:  # noqa: BLE001
            r["tc_cold_s"] = None
            r["tc_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"  torch.compile failed on {name}: {r['tc_error']}")
            tf = None
    del expected, exp_flat

    calls = {
        "eager": lambda: m(*args),
        "tc": (lambda: tf(*args)) if tf is not None else None,
        "kiln": (lambda: kf(*args)) if kf is not None else None,
    }
    r["waited_idle_s"] = 0.0
    for attempt in range(3 if wait_idle_s else 1):
        if wait_idle_s:
            r["waited_idle_s"] += harness.wait_idle(wait_idle_s, BG_WARN, log=log)
        load = harness.CpuLoad()
        times, iters = harness.time_interleaved(calls, repeats)
        r["bg_load_cores"], r["steal_cores"] = load.cores()
        if r["bg_load_cores"] is None or r["bg_load_cores"] <= BG_WARN:
            break
    r["iters_per_repeat"] = iters
    for side in ("eager", "tc", "kiln"):
        r[f"{side}_ms"] = times[side] * 1e3 if times[side] is not None else None

    def ratio(a, b):
        return a / b if a is not None and b is not None and b > 0 else None
    r["kiln_x_eager"] = ratio(r["eager_ms"], r["kiln_ms"])
    r["kiln_x_tc"] = ratio(r["tc_ms"], r["kiln_ms"])
    r["tc_x_eager"] = ratio(r["eager_ms"], r["tc_ms"])

    if kf is not None:
        c = kiln.counters()
        r["kiln_counters_after"] = {k: c[k] for k in ("captures", "cache_hits", "recompiles",
                                                      "graph_breaks", "fallback_ops", "eager_calls")}
        if profile_fallbacks:
            try:
                prof = fallback_profile(kf, args, r["kiln"].get("fallback_op_counts", {}))
                r["kiln_eager_op_ms"] = prof
                r["kiln_fallback_ms"] = round(sum(prof.values()), 4)
            except Exception as e:  # noqa: BLE001
                r["kiln_profile_error"] = f"{type(e).__name__}: {e}"
    return r


# ---------------------------------------------------------------------------------------------
# Table

def _f(v):
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}"


def _s(v):
    return "-" if v is None else f"{v:.2f}"


def _tc(r, v):
    return v if r.get("tc_ms") is not None else ("error" if "tc_error" in r else "-")


def _fb_label(r):
    counts = r["kiln"].get("fallback_op_counts") or {}
    return ",".join(f"{short_op(op)}x{n}" for op, n in counts.items()) or "-"


COLUMNS = [
    ("block", 16, lambda r: r["name"]),
    ("check", 5, lambda r: r["check"]),
    ("kiln", 7, lambda r: r["kiln"].get("path", "?")),
    ("eager ms", 8, lambda r: _f(r["eager_ms"])),
    ("tc ms", 8, lambda r: _tc(r, _f(r.get("tc_ms")))),
    ("kiln ms", 8, lambda r: _f(r["kiln_ms"])),
    ("k/eager", 7, lambda r: _x(r["kiln_x_eager"])),
    ("k/tc", 6, lambda r: _tc(r, _x(r["kiln_x_tc"]))),
    ("tc/eager", 8, lambda r: _tc(r, _x(r["tc_x_eager"]))),
    ("tc cold", 7, lambda r: _tc(r, _s(r.get("tc_cold_s"))) if r.get("tc_cold_s") is None else _s(r["tc_cold_s"])),
    ("k cold", 6, lambda r: _s(r.get("kiln_cold_s"))),
    ("gr", 2, lambda r: str(r["kiln"].get("graphs", "-"))),
    ("brk", 3, lambda r: str(r["kiln"].get("graph_breaks", "-"))),
    ("kern", 4, lambda r: str(r["kiln"].get("kernels", "-"))),
    ("fb ms", 6, lambda r: _f(r.get("kiln_fallback_ms"))),
    ("bg", 5, lambda r: "?" if r.get("bg_load_cores") is None
     else f"{r['bg_load_cores']:.2f}" + ("!" if r["bg_load_cores"] > BG_WARN else "")),
    ("fallback ops (name x count)", 0, _fb_label),
]
LEFT = ("block", "check", "kiln", "fallback ops (name x count)")


def row(cells):
    out = []
    for (h, w, _), c in zip(COLUMNS, cells):
        c = str(c)
        if w == 0:
            out.append(c)
            continue
        if len(c) > w:
            c = c[: w - 1] + "~"
        out.append(c.ljust(w) if h in LEFT else c.rjust(w))
    return "  ".join(out)


def print_header():
    print(row([h for h, _, _ in COLUMNS]))
    print(row(["-" * (w or 27) for _, w, _ in COLUMNS]))


def summary(results, use_inductor):
    ok = [r for r in results if r.get("kiln_ms")]
    ge = harness.geomean([r["kiln_x_eager"] for r in ok])
    gt = harness.geomean([r["kiln_x_tc"] for r in ok]) if use_inductor else None
    gtce = harness.geomean([r["tc_x_eager"] for r in results]) if use_inductor else None
    kc = harness.geomean([r.get("kiln_cold_s") for r in results])
    tcc = harness.geomean([r.get("tc_cold_s") for r in results]) if use_inductor else None
    out = {"kiln_x_eager": ge, "kiln_x_tc": gt, "tc_x_eager": gtce,
           "kiln_cold_s_geomean": kc, "tc_cold_s_geomean": tcc, "n": len(results)}
    lines = [f"geomean over {len(ok)} blocks: kiln vs eager {_x(ge)}x"
             + (f", kiln vs torch.compile {_x(gt)}x, torch.compile vs eager {_x(gtce)}x" if use_inductor else "")]
    lines.append(f"cold compile geomean: kiln {_s(kc)} s" + (f", torch.compile {_s(tcc)} s" if use_inductor else ""))
    # which fallback ops cost kiln the most time, over all blocks
    tot = collections.Counter()
    counts = collections.Counter()
    for r in results:
        for op, n in (r["kiln"].get("fallback_op_counts") or {}).items():
            counts[short_op(op)] += n
        for op, ms in (r.get("kiln_eager_op_ms") or {}).items():
            tot[op] += ms
    if counts:
        lines.append("fallback ops over all blocks (nodes): "
                     + ", ".join(f"{op} x{n}" for op, n in counts.most_common()))
    if tot:
        ksum = sum(r["kiln_ms"] for r in ok)
        lines.append(f"kiln time in eager ATen ops (fallback nodes), ms per call summed over blocks "
                     f"(kiln total {ksum:.1f} ms): "
                     + ", ".join(f"{op} {ms:.2f}" for op, ms in tot.most_common(12)))
    out["fallback_nodes"] = dict(counts)
    out["fallback_ms"] = dict(tot)
    return lines, out


def main():
    args = parse_args()
    t_start = time.perf_counter()
    threads = max(1, args.threads)
    harness.set_threads(threads)
    repeats = args.repeats or (5 if args.quick else 15)
    use_inductor = not args.no_inductor
    names = [n for n in models.NAMES if not args.only or any(s in n for s in args.only)]
    if not names:
        print(f"no block matches {args.only}; blocks: {', '.join(models.NAMES)}")
        return 2
    torch.set_grad_enabled(False)   # inference: every side runs under no_grad, modules in eval()

    machine = harness.machine_info(threads)
    print("=" * 50 + " kiln model suite " + "=" * 50)
    for line in harness.machine_lines(machine) + harness.env_lines():
        print(line)
    print(f"mode: {args.dtype}, {'small' if args.small else 'full'} sizes, {repeats} timed repeats per side (median), "
          f">= 20 ms per repeat, sides interleaved; no_grad + eval(); torch.compile: "
          f"{'Inductor default mode' if use_inductor else 'skipped (--no-inductor)'}")
    warm = harness.warm_up_compilers(use_inductor)
    print("one-time compiler start-up (paid on a throwaway function, excluded from cold times): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items() if isinstance(v, float)))
    print("columns: kiln = fused (all kernels) / partial (kernels + fallback ops) / EAGER (whole call eager); "
          "k = kiln, tc = torch.compile; cold = first call of a fresh compile (s); gr = graphs, "
          "brk = graph breaks, kern = kiln kernels; fb ms = kiln's time per call inside fallback ops "
          "(torch.profiler); bg = other processes' CPU use while timing (cores, '!' = unreliable)")
    print(flush=True)

    run_load = harness.CpuLoad()
    print_header()
    results = []
    for name in names:
        r = measure_block(name, args.small, repeats, use_inductor, not args.no_profile, args.wait_idle,
                          dtype=DTYPES[args.dtype])
        results.append(r)
        print(row([fn(r) for _, _, fn in COLUMNS]), flush=True)
        torch._dynamo.reset()
        kiln.reset()

    print()
    lines, summ = summary(results, use_inductor)
    for line in lines:
        print(line)
    total_bg, total_steal = run_load.cores()
    if total_bg is not None:
        print(f"background CPU load from other processes over the run: {total_bg:.2f} cores"
              + (f", steal {total_steal:.2f}" if total_steal is not None else ""))
    noisy = [r["name"] for r in results if (r.get("bg_load_cores") or 0) > BG_WARN]
    if noisy:
        harness.loud(f"WARNING: other processes used > {BG_WARN} cores while timing: {', '.join(noisy)} "
                     "(marked '!'); those timings are unreliable, rerun on an idle machine or with --wait-idle 60")
    for r in results:
        if r["kiln"].get("path") == "EAGER":
            print(f"kiln ran {r['name']} wholly eagerly: " + "; ".join(r["kiln"].get("reasons", {})))
    brk = [r for r in results if r["kiln"].get("graph_breaks")]
    for r in brk:
        print(f"graph breaks in {r['name']}: " + "; ".join(f"{a} at {b}" for a, b in r["kiln"].get("explain_breaks", [])))
    fails = [r["name"] for r in results if r["check"] != "ok"]
    if fails:
        harness.loud(f"FAIL: kiln differs from eager (or errored) on: {', '.join(fails)}")

    doc = {"machine": machine, "env": {k: os.environ.get(k) for k in harness.MALLOC_ENV},
           "args": vars(args), "repeats": repeats, "compiler_startup_s": warm,
           "summary": summ, "results": results, "bg_load_cores": total_bg, "steal_cores": total_steal,
           "wall_s": time.perf_counter() - t_start}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"json: {args.json}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
