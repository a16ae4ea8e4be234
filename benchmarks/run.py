#!/usr/bin/env python3
"""kiln benchmark harness: eager vs torch.compile (Inductor) vs kiln, against a copy floor.

    PYTHONPATH=python .venv/bin/python benchmarks/run.py            # full run
    PYTHONPATH=python .venv/bin/python benchmarks/run.py --quick    # < 1 minute
    ... --threads 1 --only softmax --no-inductor --json out.json --plot out.png

See benchmarks/README.md for what every column means.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

harness.ensure_env(__file__)   # re-execs with the malloc environment; before importing torch

import json  # noqa: E402
import time  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for every side (default: os.cpu_count() = %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, large sizes divided by 16 (finishes in < 1 minute)")
    p.add_argument("--only", metavar="NAME_SUBSTRING", action="append",
                   help="run only workloads whose name contains this (repeatable)")
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side (default 15, --quick 5); the median is reported")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before timing each workload, wait up to S seconds for other processes "
                        "to stop using the CPU (default 0: don't wait; rows measured under load "
                        "are marked '!' either way)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"), metavar="PATH",
                   help="write all results here (default: %(default)s); '' to skip")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG chart here")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Table

COLUMNS = [
    # header, width, key or function of the result row
    ("workload", 28, lambda r: r["name"]),
    ("kiln path", 22, lambda r: r["kiln"]["label"]),
    ("check", 5, lambda r: r["check"]),
    ("eager ms", 9, lambda r: _f(r["eager_ms"])),
    ("tc ms", 9, lambda r: _f(r["tc_ms"]) if r.get("tc_ms") is not None else _tc_missing(r)),
    ("kiln ms", 9, lambda r: _f(r["kiln_ms"])),
    ("x eager", 7, lambda r: _x(r["kiln_x_eager"])),
    ("x tc", 7, lambda r: _x(r["kiln_x_tc"]) if r.get("tc_ms") is not None else _tc_missing(r)),
    ("floor ms", 9, lambda r: _f(r["floor_ms"])),
    ("copy GB/s", 9, lambda r: f"{r['copy_gbps']:.1f}"),
    ("kiln/flr", 8, lambda r: _x(r["kiln_over_floor"])),
    ("tc cold s", 9, lambda r: _cold(r, "tc") if r.get("tc_cold_s") is not None else _tc_missing(r)),
    ("kiln cold s", 11, lambda r: _cold(r, "kiln")),
    ("bg", 5, lambda r: _bg(r.get("bg_load_cores"))),
]

BG_WARN = 0.15   # other processes' CPU use (in cores) above which a row is marked '!'


def _bg(v):
    return "?" if v is None else f"{v:.2f}" + ("!" if v > BG_WARN else "")


def _cold(r, side):
    """Cold compile seconds, with '!' when other processes were busy during that single call."""
    v, bg = r.get(f"{side}_cold_s"), r.get(f"{side}_cold_bg_cores")
    return _s(v) + ("!" if v is not None and bg is not None and bg > BG_WARN else "")


def _tc_missing(r):
    return "error" if "tc_error" in r else "-"


def _f(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}"


def _s(v):
    return "-" if v is None else f"{v:.3f}"


def row(cells):
    out = []
    for (h, w, _), c in zip(COLUMNS, cells):
        c = str(c)
        if len(c) > w:
            c = c[: w - 1] + "~"
        out.append(c.ljust(w) if h in ("workload", "kiln path", "check") else c.rjust(w))
    return "  ".join(out)


def print_header():
    print(row([h for h, _, _ in COLUMNS]))
    print(row(["-" * w for _, w, _ in COLUMNS]))


def summary(results, use_inductor):
    lines = []
    out = {}
    for group in ("large", "small"):
        rs = [r for r in results if r["group"] == group]
        if not rs:
            continue
        fused = [r for r in rs if r["kiln"]["path"] == "fused"]
        ge = harness.geomean([r["kiln_x_eager"] for r in rs])
        gt = harness.geomean([r["kiln_x_tc"] for r in rs]) if use_inductor else None
        gef = harness.geomean([r["kiln_x_eager"] for r in fused])
        gtf = harness.geomean([r["kiln_x_tc"] for r in fused]) if use_inductor else None
        gtce = harness.geomean([r["tc_x_eager"] for r in rs]) if use_inductor else None
        ntc = sum(1 for r in rs if r.get("kiln_x_tc") is not None)
        out[group] = {"kiln_x_eager": ge, "kiln_x_tc": gt, "kiln_x_eager_fused_only": gef,
                      "kiln_x_tc_fused_only": gtf, "tc_x_eager": gtce,
                      "n": len(rs), "n_fused": len(fused), "n_tc": ntc}
        nb = sum((r.get("bg_load_cores") or 0) > BG_WARN for r in rs)
        out[group]["n_under_load"] = nb
        lines.append(
            (f"UNRELIABLE ({nb}/{len(rs)} rows timed under load): " if nb else "")
            + f"geomean {group:5s} ({len(rs)} workloads, kiln fused {len(fused)}): "
            f"kiln vs eager {_x(ge)}x"
            + (f", kiln vs torch.compile {_x(gt)}x (over {ntc})" if use_inductor else "")
            + (f", torch.compile vs eager {_x(gtce)}x" if use_inductor else "")
            + (f"  |  fused-only: vs eager {_x(gef)}x" if fused else "")
            + (f", vs torch.compile {_x(gtf)}x" if fused and use_inductor else "")
            )
    if use_inductor:
        pairs = [r["tc_cold_s"] / r["kiln_cold_s"] for r in results
                 if r.get("tc_cold_s") and r.get("kiln_cold_s")]
        gc_ = harness.geomean(pairs)
        out["cold_compile_tc_over_kiln"] = gc_
        out["cold_compile_n"] = len(pairs)
        kc = harness.geomean([r.get("kiln_cold_s") for r in results])
        tcc = harness.geomean([r.get("tc_cold_s") for r in results])
        lines.append(f"cold compile geomean: torch.compile {_s(tcc)} s, kiln {_s(kc)} s  ->  "
                     f"torch.compile/kiln = {_x(gc_)}x (over {len(pairs)} workloads)")
    return lines, out


# ---------------------------------------------------------------------------------------------
# Plot

def plot(results, path, use_inductor, machine):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["name"] for r in results]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10, 0.7 * len(names) + 3), 9), sharex=True)

    def vals(key):
        return [r.get(key) if r.get(key) else np.nan for r in results]
    width = 0.38
    if use_inductor:
        ax1.bar(x - width / 2, vals("tc_x_eager"), width, label="torch.compile / eager", color="#888888")
        ax1.bar(x + width / 2, vals("kiln_x_eager"), width, label="kiln / eager", color="#d2691e")
    else:
        ax1.bar(x, vals("kiln_x_eager"), width, label="kiln / eager", color="#d2691e")
    for i, r in enumerate(results):
        if r["kiln"]["path"] != "fused":
            ax1.annotate(r["kiln"]["path"].lower(), (x[i] + (width / 2 if use_inductor else 0), 1.0),
                         ha="center", va="bottom", fontsize=7, rotation=90, color="#803000")
    ax1.axhline(1.0, color="black", lw=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("speedup over eager (log)")
    ax1.set_title(f"kiln vs torch.compile vs eager  -  {machine['cpu_model']}, "
                  f"{machine['threads']} threads, torch {machine['torch']}, {machine['date'][:10]}",
                  fontsize=9)
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", which="both", alpha=0.3)

    if use_inductor:
        ax2.bar(x - width / 2, vals("tc_over_floor"), width, label="torch.compile / floor", color="#888888")
        ax2.bar(x + width / 2, vals("kiln_over_floor"), width, label="kiln / floor", color="#d2691e")
    else:
        ax2.bar(x, vals("kiln_over_floor"), width, label="kiln / floor", color="#d2691e")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_ylabel("time / copy floor (log, 1 = bandwidth bound)")
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", which="both", alpha=0.3)
    for ax in (ax1, ax2):   # a line between the large and the small set
        for i in range(1, len(results)):
            if results[i]["group"] != results[i - 1]["group"]:
                ax.axvline(i - 0.5, color="#444444", lw=0.8, ls="--")
    labels = [r["name"] + (" (!load)" if (r.get("bg_load_cores") or 0) > BG_WARN else "") for r in results]
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def main():
    args = parse_args()
    t_start = time.perf_counter()
    global workloads
    import torch  # noqa: F401  (after the environment is in place)
    import kiln  # noqa: F401
    import workloads
    use_inductor = not args.no_inductor
    repeats = args.repeats or (5 if args.quick else 15)
    threads = max(1, args.threads)
    harness.set_threads(threads)

    ws = workloads.all_workloads(quick=args.quick)
    if args.only:
        ws = [w for w in ws if any(s in w.name for s in args.only)]
        if not ws:
            print(f"no workload matches {args.only}; names: "
                  + ", ".join(w.name for w in workloads.all_workloads(args.quick)))
            return 2

    machine = harness.machine_info(threads)
    print("=" * 60 + " kiln benchmarks " + "=" * 60)
    for line in harness.machine_lines(machine) + harness.env_lines():
        print(line)
    print(f"mode: {'quick' if args.quick else 'full'}, {repeats} timed repeats per side (median), "
          f">= 20 ms per repeat, sides interleaved; torch.compile: "
          f"{'Inductor default mode' if use_inductor else 'skipped (--no-inductor)'}")
    warm = harness.warm_up_compilers(use_inductor)
    print("one-time compiler start-up (paid on a throwaway function, excluded from cold times): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items() if isinstance(v, float)))
    print(flush=True)

    run_load = harness.CpuLoad()
    print_header()
    results = []
    current_group = None
    for w in ws:
        if w.group != current_group:
            current_group = w.group
            print(f"[{w.group}]", flush=True)
        r = harness.measure(w, repeats, use_inductor, wait_idle_s=args.wait_idle, bg_threshold=BG_WARN)
        results.append(r)
        print(row([fn(r) for _, _, fn in COLUMNS]), flush=True)

    print()
    lines, summ = summary(results, use_inductor)
    for line in lines:
        print(line)

    noisy = [r for r in results if (r.get("bg_load_cores") or 0) > BG_WARN]
    total_bg, total_steal = run_load.cores()
    print(f"background CPU load from other processes over the run: "
          f"{total_bg:.2f} cores" if total_bg is not None else "background CPU load: unknown", end="")
    print(f", steal {total_steal:.2f} cores" if total_steal is not None else "")
    if noisy:
        harness.loud(f"WARNING: other processes used > {BG_WARN} cores while timing {len(noisy)} workload(s) "
                     f"(marked '!' in column bg): those timings are unreliable; rerun on an idle machine.\n"
                     + "".join(f"\n!!!   {r['name']}: {r['bg_load_cores']:.2f} cores; {r.get('bg_busy') or '?'}"
                               for r in noisy))
    fails = [r["name"] for r in results if r["check"] != "ok"]
    fallbacks = [r["name"] for r in results if r["kiln"]["path"] != "fused"]
    tc_errors = [r["name"] for r in results if "tc_error" in r]
    if fallbacks:
        print(f"kiln did not fully compile ({len(fallbacks)}): "
              + ", ".join(f"{r['name']} [{r['kiln']['label']}]" for r in results if r["kiln"]["path"] != "fused"))
    if tc_errors:
        print("torch.compile errors: " + "; ".join(f"{r['name']}: {r['tc_error']}" for r in results if "tc_error" in r))
    if fails:
        harness.loud(f"FAIL: kiln differs from eager (or errored) on: {', '.join(fails)}")

    doc = {"machine": machine, "env": {k: os.environ.get(k) for k in harness.MALLOC_ENV},
           "args": vars(args), "repeats": repeats, "compiler_startup_s": warm,
           "summary": summ, "results": results,
           "bg_load_cores": total_bg, "steal_cores": total_steal,
           "wall_s": time.perf_counter() - t_start}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"json: {args.json}")
    if args.plot:
        plot(results, args.plot, use_inductor, machine)
        print(f"plot: {args.plot}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
