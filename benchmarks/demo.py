#!/usr/bin/env python3
"""kiln in two minutes: compile a few real functions, check them, time them, look inside.

    PYTHONPATH=python .venv/bin/python benchmarks/demo.py [--threads N] [--no-inductor]

1. compiles GELU (tanh), a 10-op pointwise chain, softmax and layer norm (written by hand in
   plain PyTorch) with kiln, checks each against eager, and times eager / torch.compile / kiln;
2. does the same for a transformer MLP block (matrix products as BLAS steps) and prints what
   kiln.explain says of it;
3. measures the per-call overhead of each on a tiny tensor;
4. prints one generated kernel: kiln's loop IR, its LLVM IR and its x86 assembly.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

harness.ensure_env(__file__)   # re-execs with the malloc environment; before importing torch

import time  # noqa: E402


def ms(v):
    return "-" if v is None else (f"{v:8.3f}" if v >= 0.1 else f"{v:8.4f}")


def xs(a, b):
    return "    -" if a is None or b is None else f"{a / b:5.2f}x"


def try_inductor(fn, args, use_inductor):
    """(torch.compile(fn), cold seconds), or (None, None) when skipped or when it fails."""
    if not use_inductor:
        return None, None
    try:
        tf, _, cold = harness.cold_compile("inductor", fn, args)
        return tf, cold
    except Exception as e:  # noqa: BLE001
        print(f"  torch.compile failed: {type(e).__name__}: {e}")
        return None, None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before timing, wait up to S seconds for other processes to go idle")
    args = p.parse_args()
    global torch, kiln, W
    import torch
    import kiln
    import workloads as W
    use_inductor = not args.no_inductor
    t_start = time.perf_counter()
    harness.set_threads(args.threads)
    m = harness.machine_info(args.threads)
    for line in harness.machine_lines(m) + harness.env_lines():
        print(line)
    print("\nstarting compilers (one-time, not counted below) ...", flush=True)
    warm = harness.warm_up_compilers(use_inductor)
    print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in warm.items() if isinstance(v, float)))

    # ---- 1. real functions at moderate sizes -----------------------------------------------
    n, rows, cols = 4 << 20, 4096, 1024
    pick = ("gelu_tanh", "chain10", "softmax_manual", "layernorm_manual")
    ws = [w for w in W.build_set(n, rows, cols, "large") if w.name.split("[")[0] in pick]
    print(f"\n1) eager vs torch.compile vs kiln  ({args.threads} threads; median of 7; "
          f"floor = same bytes through a memcpy-style copy)\n")
    hdr = (f"{'function':28s} {'kiln':20s} {'check':5s} {'eager ms':>9s} {'tc ms':>9s} {'kiln ms':>9s} "
           f"{'vs eager':>8s} {'vs tc':>7s} {'floor ms':>9s} {'tc cold s':>9s} {'kiln cold s':>11s} {'bg':>5s}")
    print(hdr)
    print("-" * len(hdr))
    results = []
    for w in ws:
        r = harness.measure(w, repeats=7, use_inductor=use_inductor, wait_idle_s=args.wait_idle)
        results.append(r)
        tc_ms = ms(r["tc_ms"]) if r.get("tc_ms") is not None else ("error" if "tc_error" in r else "-")
        tcc = f"{r['tc_cold_s']:9.3f}" if r.get("tc_cold_s") is not None else f"{'-':>9s}"
        kcc = f"{r['kiln_cold_s']:11.3f}" if r.get("kiln_cold_s") is not None else f"{'-':>11s}"
        bg = r.get("bg_load_cores")
        bgs = "?" if bg is None else f"{bg:.2f}" + ("!" if bg > 0.15 else "")
        print(f"{r['name']:28s} {r['kiln']['label'][:20]:20s} {r['check']:5s} {ms(r['eager_ms']):>9s} "
              f"{tc_ms:>9s} {ms(r['kiln_ms']):>9s} {xs(r['eager_ms'], r['kiln_ms']):>8s} "
              f"{xs(r['tc_ms'], r['kiln_ms']):>7s} {ms(r['floor_ms']):>9s} {tcc} {kcc} "
              f"{bgs:>5s}", flush=True)
    if any(r["check"] != "ok" for r in results):
        harness.loud("FAIL: kiln differs from eager on: "
                     + ", ".join(r["name"] for r in results if r["check"] != "ok"))
    if any(r["kiln"]["path"] != "fused" for r in results):
        print("  EAGER = kiln captured the function but could not lower an op (named in brackets), "
              "so it runs it eagerly; still timed.")
    if any((r.get("bg_load_cores") or 0) > 0.15 for r in results):
        print("  bg = CPU used by other processes while timing, in cores; '!' = busy machine, the row "
              "is unreliable (rerun idle, or with --wait-idle 60).")

    # ---- 2. a model block with matrix products ---------------------------------------------
    import models
    block = models.build("mlp")
    inp = block.make_inputs(0)
    print(f"\n2) a transformer MLP block (Linear-GELU-Linear + residual + LayerNorm, x {list(inp[0].shape)}): "
          f"kiln runs the products as BLAS steps ({kiln._C.blas_library().split(' ')[0] or 'none'}) with the "
          f"bias + GELU fused after them\n")
    with torch.no_grad():
        want = block(*inp)
        kb, got, kcold = harness.cold_compile("kiln", block, inp)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kb(*inp), want, rtol=1e-4, atol=1e-4)
        tb, _ = try_inductor(block, inp, use_inductor)
        harness.wait_idle(args.wait_idle, 0.15)
        t, _ = harness.time_interleaved({"eager": lambda: block(*inp), "tc": (lambda: tb(*inp)) if tb is not None else None,
                                          "kiln": lambda: kb(*inp)}, repeats=7)
        e = kiln.explain(block, *inp)
    tcm = f"{t['tc'] * 1e3:.2f}" if t.get("tc") else "-"
    print(f"  eager {t['eager'] * 1e3:.2f} ms, torch.compile {tcm} ms, kiln {t['kiln'] * 1e3:.2f} ms "
          f"({xs(t['eager'], t['kiln'])} over eager, {xs(t['tc'], t['kiln']) if t.get('tc') else '-'} over "
          f"torch.compile); kiln cold compile {kcold:.3f} s; check ok")
    print("  " + str(e).split("guards:")[0].replace("\n", "\n  ").rstrip())

    # ---- 3. per-call overhead on a tiny tensor ---------------------------------------------
    print("\n3) per-call overhead on a tiny tensor (16 floats; time per call in microseconds)\n")

    def add_one(x):
        return x + 1.0

    g = torch.Generator().manual_seed(0)
    tiny = [("x + 1.0  [16]", add_one, (torch.randn(16, generator=g),)),
            ("chain10  [16]", W.pointwise_chain10, (torch.randn(16, generator=g), torch.randn(16, generator=g)))]
    print(f"{'function':16s} {'eager us':>9s} {'tc us':>9s} {'kiln us':>9s}   {'tc cold s':>9s} {'kiln cold s':>11s} {'bg':>5s}")
    for name, fn, a in tiny:
        kf, _, kcold = harness.cold_compile("kiln", fn, a)
        tf, tcold = try_inductor(fn, a, use_inductor)
        harness.wait_idle(args.wait_idle, 0.15)
        load = harness.CpuLoad()
        t, _ = harness.time_interleaved({"eager": lambda: fn(*a),
                                          "tc": (lambda: tf(*a)) if tf is not None else None,
                                          "kiln": lambda: kf(*a)}, repeats=7)
        us = {k: (f"{v * 1e6:9.2f}" if v is not None else f"{'-':>9s}") for k, v in t.items()}
        bg, _ = load.cores()
        bgs = "?" if bg is None else f"{bg:.2f}" + ("!" if bg > 0.15 else "")
        tcs = f"{tcold:9.3f}" if tcold is not None else f"{'-':>9s}"
        print(f"{name:16s} {us['eager']} {us['tc']} {us['kiln']}   {tcs} {kcold:11.3f} {bgs:>5s}")

    # ---- 4. one generated kernel -------------------------------------------------------------
    x = torch.randn(1 << 16, generator=g)
    kiln.reset()
    f = kiln.compile(W.gelu_tanh)
    torch.testing.assert_close(f(x), W.gelu_tanh(x), rtol=1e-4, atol=1e-4)
    ks = kiln.kernels(f)
    print(f"\n4) the kernel kiln generated for gelu_tanh (F.gelu(x, approximate='tanh')) "
          f"on {x.numel()} floats: {len(ks)} kernel(s)")
    if ks:
        k = ks[0]

        def head(text, n=40, width=150):
            lines = [l if len(l) <= width else l[:width - 3] + "..." for l in text.rstrip("\n").splitlines()]
            more = f"\n    ... ({len(lines) - n} more lines)" if len(lines) > n else ""
            return "\n".join("    " + l for l in lines[:n]) + more
        print(f"\n--- {k.name}: kiln loop IR ---")
        print(head(k.loop_ir, 60))
        print(f"\n--- {k.name}: LLVM IR (first 40 lines) ---")
        print(head(k.source))
        print(f"\n--- {k.name}: assembly (first 40 lines) ---")
        print(head(k.asm))
    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s. "
          f"Full comparison: PYTHONPATH=python .venv/bin/python benchmarks/run.py")
    return 1 if any(r["check"] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
