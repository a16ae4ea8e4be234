"""The fuzzer's random programs (kiln.fuzz) through the CUDA code generator, run on the CPU
emulation of the kernels (cuda_emulation.py) and compared with eager: CUDA codegen bugs found on
a machine without a GPU.

    PYTHONPATH=python python tests/python/cuda_emulation_fuzz.py --seed 0 --count 200 [--out DIR]
        [--half bfloat16|float16]     # the programs' float32 values as a half type (kiln.fuzz.as_half)

A program is skipped (and counted) when it cannot be captured as one graph for CUDA (graph
breaks), when eager raises, when it writes into its arguments (the emulation returns results
only), or when a kernel flags a failure (eager would redo the call). Each mismatch is printed with
the program's source and written to DIR/seed_N.py when --out is given. The fuzzer's comparison
decides (kiln.fuzz.compare, its tolerances, at the half type's precision with --half, and its
referees that excuse ill-conditioned results). Differences CUDA shares with
eager CUDA but not with eager on the CPU (contracted FMAs, libdevice's last ulps, saturating
float-to-int casts) can show up as mismatches; read them before calling one a bug.
"""

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cuda_emulation import emulate  # noqa: E402
from kiln import _C, fuzz  # noqa: E402
from kiln._flatten import flatten  # noqa: E402


def check(seed, half=None):
    """(status, message): status is ok, skip or mismatch. half: a dtype that replaces float32."""
    prog = fuzz.generate(seed, half=half)
    if prog.has_break:
        return "skip", "graph break"
    fn = prog.function()
    inputs = prog.make_inputs()
    before = [t.clone() if isinstance(t, torch.Tensor) else t for t in inputs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = fn(*inputs)
    except Exception as e:  # noqa: BLE001
        return "skip", f"eager raised {type(e).__name__}"
    for a, b in zip(inputs, before):
        if isinstance(a, torch.Tensor) and not torch.equal(a.nan_to_num(), b.nan_to_num()):
            return "skip", "writes an argument"
    leaves = []
    flatten(want, leaves)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        return "skip", "returns non-tensors"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got, ok = emulate(fn, *[t.clone() if isinstance(t, torch.Tensor) else t for t in before], per_result=True)
    except _C.Unsupported as e:
        return "skip", f"unsupported: {str(e)[:80]}"
    except Exception:  # noqa: BLE001
        # The emulation's inputs are clones, dense where the generated ones may be expanded
        # views: eager may raise on them (an in-place copy onto an alias), and so does tracing.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(*[t.clone() if isinstance(t, torch.Tensor) else t for t in before])
        except Exception as e:  # noqa: BLE001
            return "skip", f"eager raised {type(e).__name__} on the cloned inputs"
        raise
    if not ok:
        return "skip", "a kernel flagged a failure"
    # The fuzzer's referees (float64, perturbed inputs, rounding noise) excuse differences where
    # eager itself is ill-conditioned; their results flattened as `leaves` is.
    def flat(thunk):
        r = thunk()
        if r is None:
            return None
        out = []
        flatten(r, out)
        return out
    refs = [(name, (lambda t=t: flat(t))) for name, t in fuzz._result_refs(fuzz._referees(fn, prog, before))]
    with fuzz.half_tolerances(half):
        msg = fuzz.compare(leaves, got, refs)
    return ("mismatch", msg) if msg else ("ok", "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--out", default="")
    ap.add_argument("--half", choices=["bfloat16", "float16"], default=None)
    opts = ap.parse_args()
    half = getattr(torch, opts.half) if opts.half else None
    counts = {}
    t0 = time.time()
    for seed in range(opts.seed, opts.seed + opts.count):
        try:
            status, msg = check(seed, half)
        except Exception as e:  # noqa: BLE001 - a crash of the driver or the emulation is a finding too
            status, msg = "error", f"{type(e).__name__}: {e}"
        counts[status] = counts.get(status, 0) + 1
        if (seed - opts.seed) % 100 == 99:
            print(f"... {seed - opts.seed + 1} programs, {time.time() - t0:.0f} s: {counts}", flush=True)
        if status in ("mismatch", "error"):
            src = fuzz.generate(seed, half=half).source()
            print(f"== seed {seed}: {status}: {msg}\n{src}", flush=True)
            if opts.out:
                os.makedirs(opts.out, exist_ok=True)
                with open(os.path.join(opts.out, f"seed_{seed}.py"), "w") as f:
                    f.write(f"# {status}: {msg}\n{src}\n")
    print(f"{opts.count} programs from seed {opts.seed} in {time.time() - t0:.0f} s: {counts}")


if __name__ == "__main__":
    main()
