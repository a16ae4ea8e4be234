"""kiln startup benchmark: what a fresh process pays before its first compiled call.

    PYTHONPATH=python .venv/bin/python benchmarks/run_startup.py [--threads 2] [--no-inductor]

Every measurement runs in its own fresh process (same thread count and malloc environment):
  * `import kiln` over `import torch`;
  * per case, the first call (inference: a model's forward under no_grad; training: forward
    + loss + backward) of eager, torch.compile cold (an empty Inductor cache) and warm (the
    cache the cold process filled), kiln cold (an empty disk cache) and warm (the disk cache
    the cold process filled), next to one eager call of the same process after its first.
The warm-start target of the compile-cost issue: kiln warm <= 2x one eager call + 20 ms.
Cases: the training workloads of train_models.py (gpt2_block, llama_layer, mlp_classifier,
resnet_block, bert_classifier), each as an inference case and as a training case.
"""

import argparse
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


def run_child(side, name, mode, threads, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    res = subprocess.run(harness.python_argv() + ["-c", _CHILD, side, name, mode, str(threads),
                                                  os.path.dirname(os.path.abspath(__file__))],
                         capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"{side} {name} {mode} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-inductor", action="store_true", help="leave torch.compile out")
    ap.add_argument("--only", default="", help="cases whose name contains this")
    ap.add_argument("--json", default="", help="write the rows here")
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
    met = sum(r["kiln_warm_s"] <= r["target_s"] for r in rows)
    print(f"target = 2 x one eager call + 20 ms: kiln warm meets it in {met} of {len(rows)}")
    print(f"geomean first call: kiln cold {harness.geomean([r['kiln_cold_s'] for r in rows]):.2f} s, "
          f"kiln warm {harness.geomean([r['kiln_warm_s'] for r in rows]):.2f} s"
          + ("" if args.no_inductor else
             f", tc cold {harness.geomean([r['tc_cold_s'] for r in rows]):.2f} s, "
             f"tc warm {harness.geomean([r['tc_warm_s'] for r in rows]):.2f} s"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kiln_import_s": kiln_import, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
