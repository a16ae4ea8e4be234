"""kiln startup benchmark: what a fresh process pays before its first compiled call.

    PYTHONPATH=python .venv/bin/python benchmarks/run_startup.py [--threads 2] [--no-inductor]

Every measurement runs in its own fresh process (same thread count and malloc environment):
  * `import kiln` over `import torch`;
  * per case, the first call (inference: a model's forward under no_grad; training: forward
    + loss + backward) of eager, torch.compile cold (an empty Inductor cache) and warm (the
    cache the cold process filled), kiln cold (an empty disk cache) and warm (the disk cache
    the cold process filled), next to one eager call of the same process after its first.
The warm-start target of the compile-cost issue: kiln warm <= 2x one eager call + 20 ms.
Then the first 20 calls of a function whose input size changes every few calls: eager,
torch.compile, kiln compiling on the calling thread and in the background (target: <= 1.1x eager).
Cases: the training workloads of train_models.py (gpt2_block, llama_layer, mlp_classifier,
resnet_block, bert_classifier), each as an inference case and as a training case.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.ensure_env(__file__)  # the malloc environment; before importing torch

# One measurement in a fresh process: prints a JSON line.
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
side, name, mode, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = {"torch_import_s": t1 - t0}
torch.set_num_threads(threads)
if side.startswith("kiln"):
    t = time.perf_counter()
    import kiln
    out["kiln_import_s"] = time.perf_counter() - t
    kiln.config.set("num_threads", threads)
if name == "-":
    print(json.dumps(out)); sys.exit(0)
sys.path.insert(0, sys.argv[5])
import train_models
model, make_batch = train_models.BY_NAME[name].build(0)
if mode == "inference":
    model.eval()
batch = make_batch(0)
f = model if side == "eager" else torch.compile(model) if side.startswith("tc") else kiln.compile(model)

def call(fn):
    if mode == "inference":
        with torch.no_grad():
            return fn(*batch)
    for p in model.parameters():
        p.grad = None
    loss = fn(*batch)
    loss.backward()
    return loss

t = time.perf_counter(); call(f); out["first_s"] = time.perf_counter() - t
t = time.perf_counter(); call(model); out["eager_call_s"] = time.perf_counter() - t
if side.startswith("kiln"):
    out["kiln_eager_calls"] = kiln.counters()["eager_calls"]
print(json.dumps(out))
"""


# The first 20 calls of a function whose input size changes every few calls, in a fresh
# process: eager, torch.compile, kiln compiling on the calling thread (blocking) and on its
# compile thread (background). Prints a JSON line: the total, and whether every result matched.
_SIZES_CHILD = r"""
import json, sys, time
import torch
side, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
block = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512),
                            torch.nn.LayerNorm(512)).eval()
def fn(x):
    return block(x).softmax(-1) * 2 + x
if side.startswith("kiln"):
    import kiln
    kiln.config.set("num_threads", threads)
    f = kiln.compile(fn, background=side == "kiln_background")
elif side == "tc":
    f = torch.compile(fn)
else:
    f = fn
SIZES = [8, 8, 8, 24, 24, 24, 40, 40, 40, 8, 24, 40, 56, 56, 56, 8, 24, 40, 56, 8]
inputs = [torch.randn(n, 512) for n in SIZES]
ok = True
with torch.no_grad():
    t = time.perf_counter()
    outs = [f(x) for x in inputs]
    total = time.perf_counter() - t
    for x, o in zip(inputs, outs):
        ok = ok and torch.allclose(o, fn(x), rtol=1e-4, atol=1e-4)
out = {"total_s": total, "ok": bool(ok)}
if side.startswith("kiln"):
    c = kiln.counters()
    out.update(captures=c["captures"], while_compiling=c["eager_calls_while_compiling"], hits=c["cache_hits"])
print(json.dumps(out))
"""


def run_child(side, name, mode, threads, env_extra, script=None):
    env = dict(os.environ)
    env.update(env_extra)
    argv = [script, side, str(threads)] if script else [_CHILD, side, name, mode, str(threads),
                                                         os.path.dirname(os.path.abspath(__file__))]
    res = subprocess.run(harness.python_argv() + ["-c"] + argv,
                         capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"{side} {name} {mode} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def changing_sizes(threads, inductor):
    """The first 20 calls of a function whose input size changes every few calls (4 sizes)."""
    sides = ["eager"] + (["tc"] if inductor else []) + ["kiln_blocking", "kiln_background"]
    res = {}
    for side in sides:
        d = tempfile.mkdtemp(prefix="kiln-startup-sizes-")
        try:  # cold caches: a fresh kiln disk cache and Inductor cache directory
            res[side] = run_child(side, "", "", threads, {"KILN_CACHE_DIR": d, "TORCHINDUCTOR_CACHE_DIR": d},
                                  script=_SIZES_CHILD)
        finally:
            shutil.rmtree(d, True)
    print("first 20 calls, input rows changing every few calls (8, 24, 40, 56; a Linear-GELU-Linear-LayerNorm "
          "block, softmax, residual), each side in a fresh process with cold caches:")
    eager = res["eager"]["total_s"]
    for side in sides:
        r = res[side]
        extra = f", {r['captures']} captures, {r['while_compiling']} calls eager while compiling, {r['hits']} " \
                f"compiled" if "captures" in r else ""
        print(f"  {side:16s} {r['total_s'] * 1e3:8.1f} ms  {r['total_s'] / eager:5.2f}x eager's time"
              f"{'' if r['ok'] else '  RESULTS DIFFER FROM EAGER'}{extra}")
    print("  target (compile-cost issue): background <= 1.1x eager's total")
    return res


def main():
    ap = harness.fresh_process_args(__doc__, "cases")
    args = ap.parse_args()
    import train_models
    for line in harness.env_lines():
        if not line.startswith("kiln disk cache"):  # set per case below
            print(line)
    print("kiln disk cache: a fresh directory per case (cold), then the same directory (warm); "
          "Inductor likewise with TORCHINDUCTOR_CACHE_DIR")
    imp = [run_child("kiln", "-", "-", args.threads, {}) for _ in range(3)]
    kiln_import = sorted(r["kiln_import_s"] for r in imp)[1]
    print(f"import kiln over import torch (median of 3 fresh processes): {kiln_import * 1e3:.0f} ms")
    sizes = changing_sizes(args.threads, not args.no_inductor)
    rows = []
    header = f"{'case (ms)':34s} {'eager call':>10s} {'eager 1st':>10s} {'tc cold':>8s} {'tc warm':>8s} " \
             f"{'kiln cold':>9s} {'kiln warm':>9s} {'target':>8s}"
    print(header)
    for w in train_models.WORKLOADS:
        if args.only not in w.name:
            continue
        for mode in ("inference", "training"):
            kdir = tempfile.mkdtemp(prefix="kiln-startup-")
            idir = tempfile.mkdtemp(prefix="kiln-startup-inductor-")
            try:
                kenv = {"KILN_CACHE": "1", "KILN_CACHE_DIR": kdir}
                ienv = {"TORCHINDUCTOR_CACHE_DIR": idir}
                eager = run_child("eager", w.name, mode, args.threads, {})
                row = {"case": f"{w.name} {mode}", "eager_call_s": eager["eager_call_s"],
                       "eager_first_s": eager["first_s"]}
                if not args.no_inductor:
                    row["tc_cold_s"] = run_child("tc", w.name, mode, args.threads, ienv)["first_s"]
                    row["tc_warm_s"] = run_child("tc", w.name, mode, args.threads, ienv)["first_s"]
                cold = run_child("kiln", w.name, mode, args.threads, kenv)
                warm = run_child("kiln", w.name, mode, args.threads, kenv)
                row["kiln_cold_s"], row["kiln_warm_s"] = cold["first_s"], warm["first_s"]
                row["target_s"] = 2 * warm["eager_call_s"] + 0.020
            finally:
                shutil.rmtree(kdir, True)
                shutil.rmtree(idir, True)
            rows.append(row)
            f = lambda k: f"{row[k] * 1e3:.0f}" if k in row else "-"  # noqa: E731
            print(f"{row['case']:34s} {row['eager_call_s'] * 1e3:10.1f} {f('eager_first_s'):>10s} "
                  f"{f('tc_cold_s'):>8s} {f('tc_warm_s'):>8s} {f('kiln_cold_s'):>9s} {f('kiln_warm_s'):>9s} "
                  f"{f('target_s'):>8s}", flush=True)
    if not rows:
        return
    met = sum(r["kiln_warm_s"] <= r["target_s"] for r in rows)
    print(f"target = 2 x one eager call + 20 ms: kiln warm meets it in {met} of {len(rows)}")
    print(f"geomean first call: kiln cold {harness.geomean([r['kiln_cold_s'] for r in rows]):.2f} s, "
          f"kiln warm {harness.geomean([r['kiln_warm_s'] for r in rows]):.2f} s"
          + ("" if args.no_inductor else
             f", tc cold {harness.geomean([r['tc_cold_s'] for r in rows]):.2f} s, "
             f"tc warm {harness.geomean([r['tc_warm_s'] for r in rows]):.2f} s"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kiln_import_s": kiln_import, "changing_sizes": sizes, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
