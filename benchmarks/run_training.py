#!/usr/bin/env python3
"""kiln training benchmark: eager vs torch.compile (Inductor, default mode) vs kiln on training
steps of small real architectures (benchmarks/train_models.py: each model's forward returns
its loss, so compiling the model compiles the loss too; the optimizer runs eagerly).

    PYTHONPATH=python .venv/bin/python benchmarks/run_training.py
    PYTHONPATH=python .venv/bin/python benchmarks/run_training.py --quick --threads 2 --only gpt2
    ... --no-inductor --json '' --repeats 9

Per workload and side (eager, torch.compile(model), kiln.compile(model)), each side in its own
fresh process (so memory peaks and compiler state do not mix; same thread count and malloc
environment everywhere):
  * correctness first: eager and kiln train copies built from the same seed for 3 optimizer
    steps on the same batches, torch seeded identically before each step (dropout draws the
    same masks); relative error max|a-b| / max(max|b|, 1e-30) of the losses, every parameter
    gradient after step 1, and every parameter and buffer after step 3. The worst is reported;
    above 5e-4 the workload FAILs and the exit status is 1.
  * cold compile: the first training step of a fresh compile (trace + compile + run, forward
    and backward), after the compiler's one-time process start-up was paid on a tiny model.
  * time per step, median of N repeats, the sides interleaved (one repeat of each per round):
    `fb` = zero_grad + forward + loss + backward, `step` = the same + optimizer.step() (the
    optimizer of each workload is printed: SGD or AdamW).
  * memory, two ways. live MB: the peak of live bytes during one train step, counted from its
    start: torch's CPU allocations from torch.profiler's memory events (exact and repeatable),
    plus, for kiln, the largest arena of temporaries it allocates outside torch (its forward's
    and backward's arenas are never held at once, so this bounds kiln's extra). And by resident
    set size (RSS) of the side's process, which sees everything but is blurred by malloc's reuse
    of freed pages (repeat runs differ by a few MB). The malloc environment keeps freed memory
    resident, so RSS alone would not fall between steps: the script calls glibc's
    malloc_trim(0) between steps, which returns free heap pages.
      step MB = peak RSS during 3 training steps over the RSS between steps (activations,
                saved tensors, temporaries: what one step needs on top of what is held);
      held MB = RSS between steps over the RSS before the first step (after the model,
                optimizer, batch and compiler start-up): gradients, optimizer state, and what
                the compiler keeps (compiled code, caches, kiln's reusable temporary arenas).
  * what kiln did, from kiln.counters() after the run: captures, eager calls with reasons,
    fallback ops by name, graph breaks. `EAGER` = kiln ran the whole step eagerly.
torch.compile is checked against eager the same way, reported in the JSON only (Inductor draws
dropout masks with its own RNG, so gpt2_block differs there by design).

Exit status 1 when kiln differs from eager (or raised) on any workload.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

harness.ensure_env(__file__)   # re-execs with the malloc environment; before importing torch

import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import kiln  # noqa: E402
import train_models  # noqa: E402

TOLERANCE = 5e-4
CHECK_STEPS = 3
MEM_STEPS = 3
MARK = "@@run_training "    # prefix of the worker's protocol lines on its stdout
MIB = 1 << 20


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for every side (default: os.cpu_count() = %(default)s)")
    p.add_argument("--quick", action="store_true", help="5 timed repeats instead of 15")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side (default 15, --quick 5); the median is reported")
    p.add_argument("--only", metavar="NAME_SUBSTRING", action="append",
                   help="run only workloads whose name contains this (repeatable)")
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--json", default=os.path.join(HERE, "results", "training.json"), metavar="PATH",
                   help="write all results here (default: %(default)s); '' to skip")
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Worker: one side of one workload, driven by the parent over stdin/stdout.

def reset_compiler(side):
    if side == "kiln":
        kiln.reset()
    elif side == "tc":
        torch._dynamo.reset()


def compile_model(side, model):
    reset_compiler(side)
    return kiln.compile(model) if side == "kiln" else torch.compile(model) if side == "tc" else model


def warm_up(side):
    """The compiler's one-time process start-up, paid on a tiny model's training step."""
    t = time.perf_counter()
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    compile_model(side, tiny)(torch.randn(4, 8)).sum().backward()
    reset_compiler(side)
    return time.perf_counter() - t


def grads(model):
    return {f"grad {n}": (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters()}


def state(model):
    return {**{f"param {n}": p.detach().clone() for n, p in model.named_parameters()},
            **{f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()}}


def rel_err(a, b):
    """max|a-b| / max(max|b|, 1e-30); inf when only one is None or NaNs sit in other places."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def check_steps(run, model, opt, make_batch, cold=None):
    """What the correctness check compares, after CHECK_STEPS seeded train steps of `run` (the
    model or its compiled wrapper): the losses, the gradients of step 1, the model's parameters
    and buffers after the last step. `cold`, a list, receives the first step's seconds."""
    losses = []
    for i in range(CHECK_STEPS):
        batch = make_batch(100 + i)
        torch.manual_seed(1000 + i)
        t = time.perf_counter()
        losses.append(train_models.train_step(run, opt, batch).detach())
        if i == 0:
            if cold is not None:
                cold.append(time.perf_counter() - t)
            out = grads(model)
    out["loss"] = torch.stack(losses)
    out.update(state(model))
    return out


def worker(side, name, threads):
    def send(**msg):
        print(MARK + json.dumps(msg, default=str), flush=True)

    harness.set_threads(threads)
    w = train_models.BY_NAME[name]
    startup_s = warm_up(side)
    model, make_batch = w.build(seed=0)
    opt = w.make_optimizer(model.parameters())
    batch = make_batch(0)
    rss_start = harness.trimmed_rss()

    # correctness: an eager reference built from the same seed (the eager side checks nothing)
    expected = None
    if side != "eager":
        ref, _ = w.build(seed=0)
        expected = check_steps(ref, ref, w.make_optimizer(ref.parameters()), make_batch)
        del ref
    cm = compile_model(side, model)
    cold = []
    got = check_steps(cm, model, opt, make_batch, cold)
    check = None
    if expected is not None:
        errs = {k: rel_err(got[k], expected[k]) for k in expected}
        worst = max(errs, key=errs.get)
        check = {"max_rel_err": errs[worst], "worst": worst, "loss_rel_err": errs["loss"],
                 "ok": errs[worst] <= TOLERANCE, "losses": got["loss"].tolist(),
                 "eager_losses": expected["loss"].tolist()}
    del expected, got
    send(cold_s=cold[0], startup_s=startup_s, check=check)

    timers, bg = None, []
    for cmd in sys.stdin:
        cmd = cmd.strip()
        if cmd == "calibrate":
            gc.collect()
            gc.disable()
            timers = {"fb": harness.Timer(lambda: train_models.forward_backward(cm, opt, batch), 0.05),
                      "step": harness.Timer(lambda: train_models.train_step(cm, opt, batch), 0.05)}
            send(iters={k: t.iters for k, t in timers.items()})
        elif cmd == "sample":
            load = harness.CpuLoad()
            for t in timers.values():
                t.sample()
            bg.append(load.cores()[0] or 0.0)
            send()
        elif cmd == "finish":
            gc.enable()
            times = {f"{k}_ms": t.median() * 1e3 for k, t in timers.items()}
            between = harness.trimmed_rss()
            harness.reset_peak_rss()
            for _ in range(MEM_STEPS):
                train_models.train_step(cm, opt, batch)
            peak = harness.peak_rss()
            live = harness.live_peak_bytes(lambda: train_models.train_step(cm, opt, batch))
            if side == "kiln":  # its temporaries (one program's arena at a time), outside torch
                live += max([p.arena_bytes for p in cm._kiln.compiled_programs() if hasattr(p, "arena_bytes")],
                            default=0)
            out = {**times, "bg_cores": sum(bg) / len(bg) if bg else None,
                   "step_mb": (peak - between) / MIB, "held_mb": (between - rss_start) / MIB,
                   "live_mb": live / MIB, "rss_start_mb": rss_start / MIB}
            if side == "kiln":
                out["counters"] = kiln.counters()
                out["path"] = harness.kiln_status(cm)["label"]
            send(**out)
            return 0
    return 1


# ---------------------------------------------------------------------------------------------
# Parent: starts the workers, interleaves their timing, prints the table.

class Worker:
    def __init__(self, side, name, threads):
        self.side = side
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            harness.python_argv() + [os.path.abspath(__file__), "--worker", side, name,
                                     "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)

    def recv(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.proc.wait()
        self.err.seek(0)
        tail = self.err.read()[-2000:].strip()
        raise RuntimeError(f"{self.side} worker exited with {self.proc.returncode}: {tail}")

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.recv()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def ask(workers, r, side, cmd):
    """workers[side]'s answer to cmd; None (and the side marked failed) when it died."""
    try:
        return workers[side].ask(cmd)
    except RuntimeError as e:
        r["sides"][side]["error"] = str(e)
        workers.pop(side).close()
        return None


def measure(w, sides, threads, repeats):
    """Everything reported for one workload: {side: {...}} plus the kiln check."""
    r = {"name": w.name, "optimizer": w.optimizer, "sides": {}}
    workers = {}
    try:
        for side in sides:   # one at a time, so cold compiles do not compete for the cores
            try:
                workers[side] = Worker(side, w.name, threads)
                r["sides"][side] = workers[side].recv()
            except RuntimeError as e:
                r["sides"][side] = {"error": str(e)}
                workers.pop(side).close()
        for side in list(workers):
            got = ask(workers, r, side, "calibrate")
            if got:
                r["sides"][side]["iters"] = got["iters"]
        for _ in range(repeats):
            for side in list(workers):
                ask(workers, r, side, "sample")
        for side in list(workers):
            r["sides"][side].update(ask(workers, r, side, "finish") or {})
    finally:
        for wk in workers.values():
            wk.close()
    k = r["sides"].get("kiln", {})
    r["check"] = "error" if "error" in k or not k.get("check") else "ok" if k["check"]["ok"] else "FAIL"
    return r


# ---------------------------------------------------------------------------------------------
# Table

def _get(r, side, key):
    return r["sides"].get(side, {}).get(key)


def _ratio(a, b):
    return a / b if a is not None and b is not None and b > 0 else None


def speedup(r, side, base, col):
    """base's time over side's in column col ('fb' or 'step'): > 1 = side faster."""
    return _ratio(_get(r, base, f"{col}_ms"), _get(r, side, f"{col}_ms"))


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _mb(r, key, sides, fmt="{:.0f}"):
    return "/".join(_f(_get(r, s, key), fmt) for s in sides)


def columns(sides):
    tc = "tc" in sides
    cols = [
        ("workload", 15, lambda r: r["name"]),
        ("opt", 5, lambda r: r["optimizer"].split("(")[0]),
        ("check", 5, lambda r: r["check"]),
        ("rel err", 7, lambda r: _f((_get(r, "kiln", "check") or {}).get("max_rel_err"), "{:.0e}")),
        ("kiln", 10, lambda r: (_get(r, "kiln", "path") or "error").split(" ")[0]),
    ]
    for col in ("fb", "step"):
        for side in sides:
            cols.append((f"{side} {col}", 8, lambda r, s=side, c=col: _f(_get(r, s, f"{c}_ms"))))
        for base in sides[:-1]:
            cols.append((f"x {base}", 5, lambda r, b=base, c=col: _f(speedup(r, "kiln", b, c))))
    if tc:
        cols.append(("tc cold", 7, lambda r: _f(_get(r, "tc", "cold_s"))))
    cols += [
        ("k cold", 6, lambda r: _f(_get(r, "kiln", "cold_s"))),
        ("live MB " + "/".join(sides), 18 if tc else 13, lambda r: _mb(r, "live_mb", sides, "{:.1f}")),
        ("step MB " + "/".join(sides), 18 if tc else 13, lambda r: _mb(r, "step_mb", sides)),
        ("held MB " + "/".join(sides), 18 if tc else 13, lambda r: _mb(r, "held_mb", sides)),
        ("bg", 5, lambda r: _bg(r)),
    ]
    return [(h, max(w, len(h)), fn) for h, w, fn in cols]


def _bg(r):
    bg = [v for v in (_get(r, s, "bg_cores") for s in r["sides"]) if v is not None]
    if not bg:
        return "?"
    v = max(bg)
    return f"{v:.2f}" + ("!" if v > 0.15 else "")


def row(cols, cells):
    return "  ".join(str(c)[:w].ljust(w) if i < 5 else str(c).rjust(w)
                     for i, ((_, w, _), c) in enumerate(zip(cols, cells)))


def summary(results, sides):
    lines, out = [], {}
    for col in ("fb", "step"):
        for side, base in (("kiln", "eager"), ("kiln", "tc"), ("tc", "eager")):
            if side in sides and base in sides:
                out[f"{side}_x_{base}_{col}"] = harness.geomean(
                    [speedup(r, side, base, col) for r in results])
    for col, what in (("fb", "fwd+bwd"), ("step", "train step")):
        lines.append(f"geomean {what}: kiln vs eager {_f(out[f'kiln_x_eager_{col}'])}x"
                     + (f", kiln vs torch.compile {_f(out[f'kiln_x_tc_{col}'])}x, torch.compile vs eager "
                        f"{_f(out[f'tc_x_eager_{col}'])}x" if "tc" in sides else ""))
    compilers = [s for s in sides if s != "eager"]
    for s in compilers:
        out[f"{s}_cold_s_geomean"] = harness.geomean([_get(r, s, "cold_s") for r in results])
    lines.append("cold compile (first step) geomean: "
                 + ", ".join(f"{s} {_f(out[f'{s}_cold_s_geomean'])} s" for s in compilers))
    for key in ("live_mb", "step_mb"):
        for s in compilers:
            out[f"{s}_{key}_over_eager"] = harness.geomean(
                [_ratio(_get(r, s, key), _get(r, "eager", key)) for r in results])
        lines.append(f"{key.replace('_mb', ' MB')} over eager's, geomean: " + ", ".join(
            f"{s} {_f(out[f'{s}_{key}_over_eager'])}x" for s in compilers))
    return lines, out


def _by_count(d):
    return sorted(d.items(), key=lambda kv: -kv[1])


def kiln_lines(r):
    k = r["sides"].get("kiln", {})
    if "error" in k:
        return [f"{r['name']}: kiln ERROR: {k['error']}"]
    c = k.get("counters", {})
    fb = ", ".join(f"{op.replace('aten.', '')} x{n}" for op, n in _by_count(c.get("fallback_op_counts", {})))
    out = [f"{r['name']}: kiln {k.get('path')}: "
           + ", ".join(f"{key} {c.get(key)}" for key in
                       ("captures", "cache_hits", "eager_calls", "graph_breaks", "fallback_ops"))
           + (f" ({fb})" if fb else "")]
    out += [f"    {n} x  {why}" for why, n in _by_count(c.get("reasons", {}))]
    chk = k.get("check") or {}
    if chk:
        out.append(f"    check: max rel err {chk['max_rel_err']:.2e} at {chk['worst']} (loss "
                   f"{chk['loss_rel_err']:.1e}); losses kiln {[round(x, 6) for x in chk['losses']]} "
                   f"eager {[round(x, 6) for x in chk['eager_losses']]}")
    return out


def main():
    args = parse_args()
    threads = max(1, args.threads)
    if args.worker:
        return worker(args.worker[0], args.worker[1], threads)
    t_start = time.perf_counter()
    repeats = args.repeats or (5 if args.quick else 15)
    sides = ["eager"] + ([] if args.no_inductor else ["tc"]) + ["kiln"]
    todo = [w for w in train_models.WORKLOADS if not args.only or any(s in w.name for s in args.only)]
    if not todo:
        print(f"no workload matches {args.only}; workloads: {', '.join(train_models.BY_NAME)}")
        return 2

    machine = harness.machine_info(threads)
    print("=" * 50 + " kiln training benchmark " + "=" * 50)
    for line in harness.machine_lines(machine) + harness.env_lines():
        print(line)
    print(f"{repeats} timed repeats per side (median), sides interleaved, each side in its own process; "
          f"float32; tc = torch.compile(model) "
          f"({'Inductor default mode' if 'tc' in sides else 'skipped (--no-inductor)'}), "
          "kiln = kiln.compile(model)")
    for w in todo:
        print(f"  {w.name:15s} {w.optimizer:34s} {w.about}")
    print("columns: check = kiln vs eager (loss, grads, params and buffers after 3 steps; rel err = worst "
          f"max|a-b|/max|b|, FAIL above {TOLERANCE:g}); kiln = EAGER / partial / fused; '<side> fb' = "
          "ms of zero_grad+fwd+loss+bwd, '<side> step' = the same + optimizer.step; x eager, x tc = kiln's "
          "speedup on the column before; cold = first step of a fresh compile (s); live MB = peak live "
          "bytes of one step (torch's allocations + kiln's arena); step MB = peak RSS "
          "during a step over RSS between steps; held MB = RSS between steps over RSS before the first "
          "step; bg = other processes' CPU use while timing (cores, '!' = unreliable)")
    print(flush=True)

    cols = columns(sides)
    print(row(cols, [h for h, _, _ in cols]))
    print(row(cols, ["-" * w for _, w, _ in cols]))
    results = []
    for w in todo:
        r = measure(w, sides, threads, repeats)
        results.append(r)
        print(row(cols, [fn(r) for _, _, fn in cols]), flush=True)

    print()
    lines, summ = summary(results, sides)
    for line in lines:
        print(line)
    print("\nwhat kiln did (kiln.counters() after each run; reasons: times met):")
    for r in results:
        for line in kiln_lines(r):
            print(line)
    for r in results:
        for side, d in r["sides"].items():
            if "error" in d and side != "kiln":
                print(f"{r['name']}: {side} failed: {d['error']}")
    fails = [r["name"] for r in results if r["check"] != "ok"]
    if fails:
        harness.loud(f"FAIL: kiln differs from eager (or errored) on: {', '.join(fails)}")
    if any((_get(r, s, "bg_cores") or 0) > 0.15 for r in results for s in sides):
        print("WARNING: other processes used the CPU while timing (rows marked '!'); "
              "rerun on an idle machine")

    if args.json:
        doc = {"machine": machine, "env": {k: os.environ.get(k) for k in harness.MALLOC_ENV},
               "args": vars(args), "repeats": repeats, "tolerance": TOLERANCE, "summary": summ,
               "results": results, "wall_s": time.perf_counter() - t_start}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"json: {args.json}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
