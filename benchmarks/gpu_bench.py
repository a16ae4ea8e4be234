"""GPU benchmark: eager vs torch.compile (Inductor) vs kiln's CUDA backend on the issue 3
workloads at sizes whose working sets exceed 256 MB, with the device-to-device copy bandwidth
measured in the same run as the floor. Run by benchmarks/gpu_check.sh on a lent GPU machine.

    python3 benchmarks/gpu_bench.py [--no-inductor] [--quick] [--json out.json]

Every kiln result is checked against eager before it is timed (max relative error printed).
Times are per call, medians over batches of 10 back-to-back calls timed with CUDA events after
warm-up; a call includes kiln's per-call work in Python (allocation of outputs, launch), as a
user's loop sees it. The floor of a workload is
its bytes_moved (each input read once, each output written once) over the measured copy
bandwidth (bytes read + written per second).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import kiln  # noqa: E402
from kiln import _cuda  # noqa: E402
from kiln._flatten import flatten  # noqa: E402
import workloads as W  # noqa: E402


def cuda_time_ms(call, reps=20, warmup=3, batch=10):
    """Median milliseconds per call of `call()`: batches of `batch` back-to-back calls between two
    CUDA events (so host-side work overlaps the previous call's kernels, as in a real loop), the
    median over `reps` batches, after warm-up."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(batch):
            call()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / batch)
    return statistics.median(times)


def copy_bandwidth():
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    n = (1 << 30) // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), reps=10, warmup=3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3)


def kiln_callable(fn, args):
    """kiln.compile(fn) when it runs CUDA kernels; otherwise the CUDA program driven directly
    (trace + compile_cuda_entry), as _compile.py will once it routes CUDA captures."""
    f = kiln.compile(fn)
    f(*args)
    f(*args)
    ks = kiln.kernels(f)
    if ks and all(getattr(k, "target", "cpu") == "cuda" for k in ks):
        return f, "kiln.compile", len(ks)
    tracer = _cuda.trace_graph(fn, args)
    runner = _cuda.compile_cuda_entry(tracer)
    full = list(tracer.leaves)

    def call(*a):
        out = runner(list(a) + full[len(a):])
        if out is False:
            raise RuntimeError("kiln flagged an integer division by zero")
        return out[0] if len(out) == 1 else tuple(out)
    return call, "runner", len(runner.kernels())


def max_rel_err(got, want):
    gl, wl = [], []
    flatten(got, gl)
    flatten(want, wl)
    worst = 0.0
    for g, w in zip(gl, wl):
        if not isinstance(w, torch.Tensor):
            continue
        g, w = g.double(), w.double()
        fin = torch.isfinite(w)
        if not torch.equal(torch.isnan(g), torch.isnan(w)):
            return float("inf")
        d = (g[fin] - w[fin]).abs().max().item() if fin.any() else 0.0
        scale = max(w[fin].abs().max().item() if fin.any() else 0.0, 1e-30)
        worst = max(worst, d / scale)
    return worst


def transformer_block():
    """A small pre-norm transformer block (attention + MLP), the matmuls included."""
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, d=1024, heads=16):
            super().__init__()
            self.h = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h), -1) @ v
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    m = Block().cuda().eval()
    x = torch.randn(8, 512, 1024, device="cuda")
    return "transformer_block[8x512x1024]", m, (x,), None


def transformer_block_bf16():
    """The same block in bfloat16: its products are kiln's cuBLAS steps (float32 accumulation),
    each linear layer's bias added by cuBLASLt in the product (Note [Bias in the product])."""
    name, m, (x,), nb = transformer_block()
    return "transformer_block bf16 [8x512x1024]", m.to(torch.bfloat16), (x.to(torch.bfloat16),), nb


def half_cases(scale):
    """bfloat16 row kernels and pointwise work (kiln rounds each op as eager does; softmax and
    layer norm compute in float32 inside), with their bytes for the floor."""
    import torch.nn.functional as F
    rows = 65536 // scale
    x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(1024, device="cuda", dtype=torch.bfloat16), torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    y = torch.randn((64 << 20) // scale, device="cuda", dtype=torch.bfloat16)
    nb = x.numel() * 2
    return [(f"softmax_F bf16 [{rows}x1024]", lambda x: F.softmax(x, -1), (x,), 2 * nb),
            (f"layernorm_F bf16 [{rows}x1024]", lambda x, w, b: F.layer_norm(x, (1024,), w, b), (x, w, b), 2 * nb),
            (f"gelu_tanh bf16 [{y.numel() >> 20}M]", lambda y: F.gelu(y, approximate="tanh"), (y,), 2 * y.numel() * 2)]


def scan_cases(scale):
    """cumsum over rows (Note [CUDA scans]: a chunk of the row per thread), which eager runs as
    its own scan kernel; memory-bound: one read, one write."""
    x = torch.randn(65536 // scale, 1024, device="cuda")
    return [(f"cumsum(x*2) [{x.shape[0]}x1024]", lambda x: torch.cumsum(x * 2, -1), (x,), 2 * x.numel() * 4)]


def column_cases(scale):
    """Reductions over the non-contiguous dim (Note [CUDA column kernels]), and the first one
    again with column kernels off (KILN_CUDA_COLUMN_KERNELS=0: the row form), for the ratio."""
    rows = 65536 // scale
    x = torch.randn(rows, 1024, device="cuda")
    act = torch.randn(64 // scale, 256, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
    nb = x.numel() * 4
    return [(f"sum_dim0 [{rows}x1024]", lambda x: x.sum(0), (x,), nb),
            (f"sum_dim0 row form [{rows}x1024]", lambda x: x.sum(0), (x,), nb, {"cuda_column_kernels": 0}),
            (f"mean_hw NHWC [{act.shape[0]}x256x28x28]", lambda a: a.mean((2, 3)), (act,), act.numel() * 4)]


def conv_block():
    """A ResNet basic block in inference: cuDNN convolutions run as eager ops inside kiln's
    program, batch norms folded or fused with the ReLUs and the residual add around them."""
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, c=64):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)

    m = Basic().cuda().eval()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(32, 64, 56, 56, device="cuda")
    return "resnet_basic_block[32x64x56x56]", m, (x,), None


def training_rows(opts):
    """Training steps (forward + loss + backward, train mode) of the transformer block in float32
    and bfloat16: eager, torch.compile(model) and kiln.compile(model), the model compiled and the
    step around it eager. kiln's forward and backward are its compiled CUDA programs (Note
    [Training capture]); the gradients are checked against eager's."""
    rows = []
    for block in (transformer_block, transformer_block_bf16):
        name, model, (x,), _ = block()
        model.train()
        x = x[:2].contiguous()  # a training step holds activations for the backward
        r = {"name": "train " + name.replace("[8x", "[2x")}
        try:
            def step(m):
                for p in model.parameters():
                    p.grad = None
                loss = m(x).float().square().mean()
                loss.backward()
                return [p.grad for p in model.parameters()]
            want = [g.clone() for g in step(model)]
            r["eager_ms"] = cuda_time_ms(lambda: step(model), opts.reps)
            if not opts.no_inductor:
                try:
                    t0 = time.perf_counter()
                    tm = torch.compile(model)
                    step(tm)
                    torch.cuda.synchronize()
                    r["inductor_compile_s"] = time.perf_counter() - t0
                    r["inductor_ms"] = cuda_time_ms(lambda: step(tm), opts.reps)
                except Exception as e:  # noqa: BLE001
                    r["inductor_error"] = f"{type(e).__name__}: {e}"[:200]
            t0 = time.perf_counter()
            km = kiln.compile(model)
            step(km)
            torch.cuda.synchronize()
            r["kiln_compile_s"] = time.perf_counter() - t0
            got = step(km)
            torch.cuda.synchronize()
            c = kiln.counters()
            r["kiln_path"] = (f"compiled fwd+bwd ({c['compiled_backward_calls']} backward calls)"
                              if c["compiled_backward_calls"] else f"eager: {list(c['reasons'])[:1]}")
            r["kiln_err"] = max(max_rel_err(g, w) for g, w in zip(got, want))
            r["kiln_ms"] = cuda_time_ms(lambda: step(km), opts.reps)
        except Exception:  # noqa: BLE001
            r["error"] = traceback.format_exc()[-500:]
        rows.append(r)
        print(json.dumps(r), flush=True)
        del model, x
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a quarter of the sizes")
    ap.add_argument("--json", default="")
    ap.add_argument("--reps", type=int, default=7, help="timed batches of 10 calls each")
    opts = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; kiln cuda: {_cuda.cuda_status()}")
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (bytes read + written)")
    scale = 4 if opts.quick else 1
    ws = W.build_set((64 << 20) // scale, 65536 // scale, 1024, "large")
    rows = []
    gen = torch.Generator().manual_seed(0)
    cases = [(w.name, w.fn, tuple(t.cuda() for t in w.make_inputs(gen)), w.bytes_moved) for w in ws]
    for more in (half_cases, column_cases, scan_cases):
        try:
            cases += more(scale)
        except Exception as e:  # noqa: BLE001
            print(f"{more.__name__} skipped: {e}")
    for block in (transformer_block, transformer_block_bf16, conv_block):
        try:
            cases.append(block())
        except Exception as e:  # noqa: BLE001
            print(f"{block.__name__} skipped: {e}")
    with torch.no_grad():
        for name, fn, args, nbytes, *knobs in cases:
            knobs = knobs[0] if knobs else {}
            r = {"name": name, "bytes": nbytes}
            try:
                want = fn(*args)
                r["eager_ms"] = cuda_time_ms(lambda: fn(*args), opts.reps)
                if not opts.no_inductor:
                    t0 = time.perf_counter()
                    try:
                        tf = torch.compile(fn)
                        tf(*args)
                        torch.cuda.synchronize()
                        r["inductor_compile_s"] = time.perf_counter() - t0
                        r["inductor_ms"] = cuda_time_ms(lambda: tf(*args), opts.reps)
                    except Exception as e:  # noqa: BLE001
                        r["inductor_error"] = f"{type(e).__name__}: {e}"[:200]
                t0 = time.perf_counter()
                try:
                    saved = {k: kiln.config.get(k) for k in knobs}
                    for k, v in knobs.items():
                        kiln.config.set(k, v)
                    try:
                        kf, how, nk = kiln_callable(fn, args)
                    finally:
                        for k, v in saved.items():
                            kiln.config.set(k, v)
                    torch.cuda.synchronize()
                    r["kiln_compile_s"] = time.perf_counter() - t0
                    r["kiln_path"], r["kiln_kernels"] = how, nk
                    got = kf(*args)
                    torch.cuda.synchronize()
                    r["kiln_err"] = max_rel_err(got, want)
                    r["kiln_ms"] = cuda_time_ms(lambda: kf(*args), opts.reps)
                except Exception as e:  # noqa: BLE001
                    r["kiln_error"] = f"{type(e).__name__}: {e}"[:300]
                if nbytes:
                    r["floor_ms"] = nbytes / bw * 1e3
            except Exception:  # noqa: BLE001
                r["error"] = traceback.format_exc()[-500:]
            rows.append(r)
            print(json.dumps(r), flush=True)
            del args
            torch.cuda.empty_cache()
    try:
        rows += training_rows(opts)
    except Exception as e:  # noqa: BLE001
        print(f"training rows skipped: {e}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"device": dev, "copy_bw": bw, "rows": rows}, f, indent=1)

    def ms(r, k):
        return f"{r[k]:8.3f}" if k in r else f"{'-':>8}"
    print()
    print(f"GPU benchmark on {dev}: median ms per call (CUDA events); floor = bytes / {bw / 1e12:.2f} TB/s copy")
    print(f"{'workload':32} {'eager':>8} {'inductor':>8} {'kiln':>8} {'floor':>8} {'kiln/eager':>10} {'floor/kiln':>10}"
          f" {'err':>8}  note")
    for r in rows:
        spd = f"{r['eager_ms'] / r['kiln_ms']:9.2f}x" if "kiln_ms" in r and "eager_ms" in r else f"{'-':>10}"
        eff = f"{r['floor_ms'] / r['kiln_ms'] * 100:9.0f}%" if "kiln_ms" in r and "floor_ms" in r else f"{'-':>10}"
        err = f"{r['kiln_err']:8.1e}" if "kiln_err" in r else f"{'-':>8}"
        note = r.get("kiln_error") or r.get("error") or r.get("inductor_error") or r.get("kiln_path", "")
        print(f"{r['name'][:32]:32} {ms(r, 'eager_ms')} {ms(r, 'inductor_ms')} {ms(r, 'kiln_ms')} {ms(r, 'floor_ms')}"
              f" {spd} {eff} {err}  {str(note).splitlines()[0][:60] if note else ''}")


if __name__ == "__main__":
    main()
