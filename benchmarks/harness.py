"""Shared benchmark machinery: process environment, machine description, timing, compile
helpers, and the per-workload measurement used by run.py and demo.py.

Import order matters: call `ensure_env()` before importing torch (run.py and demo.py do).
"""

import atexit
import datetime
import gc
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

# Page faults are very slow on this machine. These make glibc serve large allocations from
# the (kept) heap instead of fresh mmaps, so every side reuses warm pages. They are read
# by glibc at process start, hence the re-exec.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}

_INDUCTOR_CACHE_NOTE = None


def python_argv():
    """The interpreter with the options this process was started with (e.g. `python -S`, as a
    worktree's `py` wrapper runs it to keep the editable install's kiln out), for starting
    this script again or a worker of it with the same kiln."""
    return [sys.executable] + sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]


def ensure_env(script_path):
    """Re-execs the current script with MALLOC_ENV set when any of it is missing. Also points
    Inductor at a fresh, empty cache folder for this run (unless the user chose one) and turns
    kiln's disk cache off (unless KILN_CACHE is set), so cold compile times are really cold.
    Call before importing torch."""
    global _INDUCTOR_CACHE_NOTE
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        env = dict(os.environ)
        env.update(MALLOC_ENV)
        env["KILN_BENCH_REEXEC"] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, python_argv() + [os.path.abspath(script_path)] + sys.argv[1:], env)
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        _INDUCTOR_CACHE_NOTE = f"user-set {os.environ['TORCHINDUCTOR_CACHE_DIR']} (may be warm)"
    else:
        d = tempfile.mkdtemp(prefix="kiln-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d
        atexit.register(shutil.rmtree, d, True)
        _INDUCTOR_CACHE_NOTE = f"fresh per run ({d}, removed at exit)"
    # kiln's disk cache of compiled kernels is off, so its cold compile times are cold too.
    os.environ.setdefault("KILN_CACHE", "0")


def env_lines():
    how = "re-exec'd by the harness" if os.environ.get("KILN_BENCH_REEXEC") else "already set by caller"
    out = ["malloc env (all sides, " + how + "): " +
           " ".join(f"{k}={os.environ.get(k)}" for k in MALLOC_ENV)]
    if _INDUCTOR_CACHE_NOTE:
        out.append("inductor cache: " + _INDUCTOR_CACHE_NOTE)
    out.append("kiln disk cache: " + ("off (KILN_CACHE=0)" if os.environ.get("KILN_CACHE") == "0"
                                      else "on (" + os.environ.get("KILN_CACHE_DIR", "default dir") + ", may be warm)"))
    return out


# ---------------------------------------------------------------------------------------------
# Machine

def machine_info(threads):
    import torch
    try:
        import kiln
        kiln_version = getattr(kiln, "__version__", "?")
    except Exception:  # noqa: BLE001
        kiln_version = "unavailable"
    model, phys = "unknown", None
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cores_per_socket, sockets = {}, set()
        for block in text.split("\n\n"):
            fields = dict(l.split(":", 1) for l in block.splitlines() if ":" in l)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if "model name" in fields and model == "unknown":
                model = fields["model name"]
            if "physical id" in fields and "cpu cores" in fields:
                sockets.add(fields["physical id"])
                cores_per_socket[fields["physical id"]] = int(fields["cpu cores"])
        if cores_per_socket:
            phys = sum(cores_per_socket.values())
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": phys,
        "mem_gib": round(mem_gib, 1) if mem_gib else None,
        "threads": threads,
        "torch": torch.__version__,
        "kiln": kiln_version,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_lines(m):
    return [
        f"machine: {m['cpu_model']}  |  {m['logical_cpus']} logical CPUs"
        + (f", {m['physical_cores']} physical cores" if m["physical_cores"] else "")
        + (f"  |  {m['mem_gib']} GiB RAM" if m["mem_gib"] else ""),
        f"threads: {m['threads']} on every side (torch.set_num_threads, kiln num_threads)  |  "
        f"torch {m['torch']}  |  kiln {m['kiln']}  |  python {m['python']}  |  {m['date']}",
    ]


def fresh_process_args(doc, what):
    """The options of the benchmarks that run each side in a fresh process (run_startup.py,
    run_dynamic.py, run_dynamic_training.py): --threads, --no-inductor, --only (a substring of the `what` names), --json."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-inductor", action="store_true", help="leave torch.compile out")
    ap.add_argument("--only", default="", help=f"{what} whose name contains this")
    ap.add_argument("--json", default="", help="write the rows here")
    return ap


def run_cold_child(script, side, name, threads, prefix):
    """Runs `script --child SIDE NAME --threads N` (run_dynamic.py, run_dynamic_training.py) in
    a fresh process with cold caches: one new directory, removed after, for kiln's disk cache
    and Inductor's. Returns the JSON object it printed last; raises with its stderr if it
    failed."""
    import json
    import subprocess
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        env = dict(os.environ, KILN_CACHE_DIR=d, TORCHINDUCTOR_CACHE_DIR=d)
        res = subprocess.run(python_argv() + [os.path.abspath(script), "--child", side, name,
                                              "--threads", str(threads)],
                             capture_output=True, text=True, env=env, timeout=1800)
    finally:
        shutil.rmtree(d, True)
    if res.returncode != 0:
        raise RuntimeError(f"{side} {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_cold_header(threads):
    """The environment lines of a run whose sides each start cold (run_cold_child)."""
    for line in env_lines():
        if not line.startswith("kiln disk cache"):
            print(line)
    print(f"threads: {threads} on every side; each side of each workload in a fresh process with cold "
          "kiln and Inductor caches")


def set_threads(threads):
    import torch
    torch.set_num_threads(threads)
    try:
        import kiln
        kiln.config.set("num_threads", threads)
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------------------------
# Timing

class Timer:
    """Times one callable: warm-up, then a fixed iteration count per repeat chosen so that one
    repeat lasts >= min_repeat_s. `sample()` times one repeat and returns seconds per call."""

    def __init__(self, call, min_repeat_s=0.02, warmup_s=0.05, min_warmup=2):
        self.call = call
        n, t0 = 0, time.perf_counter()
        while n < min_warmup or time.perf_counter() - t0 < warmup_s:
            call()
            n += 1
            if n >= 1000:
                break
        # estimate one call from a short timed burst after warm-up
        k, t1 = 0, time.perf_counter()
        while True:
            call()
            k += 1
            el = time.perf_counter() - t1
            if el >= min_repeat_s / 4 or k >= 10000:
                break
        per_call = el / k
        self.iters = max(1, math.ceil(min_repeat_s / max(per_call, 1e-9)))
        self.samples = []

    def sample(self):
        call, iters = self.call, self.iters
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        dt = (time.perf_counter() - t0) / iters
        self.samples.append(dt)
        return dt

    def median(self):
        return statistics.median(self.samples) if self.samples else float("nan")


def time_interleaved(calls, repeats, min_repeat_s=0.02):
    """calls: dict name -> callable (or None to skip). Times them in round-robin (one repeat of
    each per round) so slow drifts hit every side alike. Returns name -> median s/call."""
    timers = {}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for name, c in calls.items():
            if c is not None:
                timers[name] = Timer(c, min_repeat_s=min_repeat_s)
        for _ in range(repeats):
            for t in timers.values():
                t.sample()
    finally:
        if gc_was:
            gc.enable()
    return {name: (timers[name].median() if name in timers else None) for name in calls}, \
        {name: t.iters for name, t in timers.items()}


class CpuLoad:
    """CPU time that other processes used while we measured, in cores (1.0 = one core fully
    busy), from /proc/stat minus this process's own CPU time. Timings taken while another
    process competes for the cores (a build, a second benchmark) are unreliable, most of all
    when the thread count equals the core count: one descheduled worker stalls every barrier."""

    def __init__(self):
        self.tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._snap()

    def _snap(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            steal = v[7] if len(v) > 7 else 0
        except (OSError, ValueError, IndexError):
            busy = steal = None
        t = os.times()
        return busy, steal, t.user + t.system + t.children_user + t.children_system, time.perf_counter()

    def cores(self):
        """(other processes' load in cores, steal in cores) since construction; None if unknown."""
        b0, s0, own0, w0 = self.start
        b1, s1, own1, w1 = self._snap()
        if b0 is None or w1 <= w0:
            return None, None
        wall = w1 - w0
        other = max(0.0, ((b1 - b0) / self.tck - (own1 - own0)) / wall)
        return other, (s1 - s0) / self.tck / wall


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


# ---------------------------------------------------------------------------------------------
# Memory: resident set size (RSS) of this process, which also counts memory allocated outside
# torch's allocator (kiln's temporaries). MALLOC_ENV keeps freed memory resident, so RSS does
# not fall when tensors are freed; trimmed_rss() hands free heap pages back first.

def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def trimmed_rss():
    """RSS in bytes after garbage collection and glibc's malloc_trim(0), which returns every
    free page of the heap to the system (memory still in use stays)."""
    import ctypes
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _proc_status_kib("VmRSS") * 1024


def reset_peak_rss():
    """Makes peak_rss() count from now: writing 5 to clear_refs resets VmHWM to the current
    RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss():
    """The highest RSS in bytes since process start or the last reset_peak_rss()."""
    return _proc_status_kib("VmHWM") * 1024


def live_peak_bytes(fn):
    """The peak, over one call of fn, of the bytes allocated through torch's CPU allocator and
    not yet freed, counted from the call's start (torch.profiler's memory events: exact and
    repeatable, unlike RSS, which malloc's reuse of freed pages blurs). Memory allocated outside
    torch (kiln's arenas of temporaries) is not seen: callers add it."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------------------------------------
# Compilers

def warm_up_compilers(use_inductor):
    """Pays each compiler's one-time process start-up cost (LLVM / Inductor initialisation,
    header precompilation) on a throwaway function, so per-workload cold times measure the
    workload's compile only. Returns {'kiln': s, 'inductor': s}."""
    import torch
    import kiln

    def tiny(x):
        return x * 2.0 + 1.0
    x = torch.randn(8)
    out = {}
    kiln.reset()
    t = time.perf_counter()
    kiln.compile(tiny)(x)
    out["kiln"] = time.perf_counter() - t
    kiln.reset()
    if use_inductor:
        torch._dynamo.reset()
        t = time.perf_counter()
        try:
            torch.compile(tiny)(x)
            out["inductor"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001
            out["inductor"] = None
            out["inductor_error"] = f"{type(e).__name__}: {e}"
        torch._dynamo.reset()
    return out


def kiln_status(f):
    """What kiln did with compiled function f since the last kiln.reset()."""
    import kiln
    c = kiln.counters()
    try:
        nk = len(kiln.kernels(f))
    except Exception:  # noqa: BLE001
        nk = 0
    fb_ops = sorted(c.get("fallback_op_counts", {}))
    eager = c["eager_calls"] > 0 or nk == 0
    if eager:
        path = "EAGER"
    elif c["fallback_ops"] or c["graph_breaks"]:
        path = "partial"
    else:
        path = "fused"
    short = [op.replace("aten.", "").replace(".default", "") for op in fb_ops]
    return {
        "path": path,
        "kernels": nk,
        "eager_calls": c["eager_calls"],
        "fallback_ops": c["fallback_ops"],
        "graph_breaks": c["graph_breaks"],
        "fallback_op_names": fb_ops,
        "label": (f"{path}:{nk}k" if path != "EAGER" else "EAGER") + (f" ({','.join(short)})" if short else "")
                 + (f" brk{c['graph_breaks']}" if c["graph_breaks"] else ""),
        "reasons": c.get("reasons", {}),
    }


def cold_compile(kind, fn, args):
    """Fresh compile of fn by 'kiln' or 'inductor', then its first call, timed.
    Returns (compiled_fn, first_output, seconds); raises on failure."""
    import torch
    import kiln
    if kind == "kiln":
        kiln.reset()
        f = kiln.compile(fn)
    else:
        torch._dynamo.reset()
        f = torch.compile(fn)
    t = time.perf_counter()
    out = f(*args)
    return f, out, time.perf_counter() - t


def check_close(actual, expected, rtol=1e-4, atol=1e-4):
    """None when close, else the assert_close message."""
    import torch
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
        return None
    except AssertionError as e:
        return str(e)


def tensors_nbytes(x):
    import torch
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(tensors_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(tensors_nbytes(v) for v in x.values())
    return 0


def loud(msg):
    bar = "!" * 100
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", flush=True)


def measure(w, repeats, use_inductor, seed=0, min_repeat_s=0.02, log=print,
            wait_idle_s=0.0, bg_threshold=0.15):
    """Everything run.py reports for one Workload. Never raises for a compiler failure."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    args = w.make_inputs(gen)
    r = {"name": w.name, "group": w.group, "bytes_moved": w.bytes_moved}

    expected = w.fn(*args)
    actual_io = tensors_nbytes(args) + tensors_nbytes(expected)
    if actual_io != w.bytes_moved:
        log(f"  warning: {w.name}: bytes_moved={w.bytes_moved} but inputs+outputs are {actual_io} bytes")
    r["io_bytes"] = actual_io

    # --- kiln: cold compile, counters, correctness (before any timing)
    kf = None
    try:
        load = CpuLoad()
        kf, kout, r["kiln_cold_s"] = cold_compile("kiln", w.fn, args)
        r["kiln_cold_bg_cores"] = load.cores()[0]
        r["kiln"] = kiln_status(kf)
        err = check_close(kout, expected)
        r["check"] = "ok" if err is None else "FAIL"
        if err is not None:
            r["check_error"] = err
            loud(f"FAIL: kiln output differs from eager for {w.name}\n{err}")
        del kout
    except Exception as e:  # noqa: BLE001
        r["kiln_cold_s"] = None
        r["kiln"] = {"path": "error", "label": "ERROR", "kernels": 0}
        r["kiln_error"] = f"{type(e).__name__}: {e}"
        r["check"] = "error"
        loud(f"ERROR: kiln failed on {w.name}: {r['kiln_error']}")
        kf = None

    # --- torch.compile (Inductor, default mode): cold compile
    tf = None
    if use_inductor:
        try:
            load = CpuLoad()
            tf, tout, r["tc_cold_s"] = cold_compile("inductor", w.fn, args)
            r["tc_cold_bg_cores"] = load.cores()[0]
            terr = check_close(tout, expected)
            r["tc_check"] = "ok" if terr is None else "differs"
            del tout
        except Exception as e:  # noqa: BLE001
            r["tc_cold_s"] = None
            r["tc_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"  torch.compile failed on {w.name}: {r['tc_error']}")
            tf = None
    del expected

    # --- copy floor: a buffer of bytes_moved/2 bytes copied into a fresh buffer moves
    # bytes_moved bytes (read once + write once), like a workload's minimum traffic.
    n_copy = max(1, w.bytes_moved // 8)
    src = torch.randn(n_copy, generator=gen, dtype=torch.float32)

    calls = {
        "eager": lambda: w.fn(*args),
        "tc": (lambda: tf(*args)) if tf is not None else None,
        "kiln": (lambda: kf(*args)) if kf is not None else None,
        "copy": lambda: torch.empty_like(src).copy_(src),
    }
    # With wait_idle_s > 0, a timing disturbed by other processes is redone (up to 3 tries).
    r["waited_idle_s"] = 0.0
    for attempt in range(3 if wait_idle_s else 1):
        if wait_idle_s:
            r["waited_idle_s"] += wait_idle(wait_idle_s, bg_threshold, log=log)
        load = CpuLoad()
        times, iters = time_interleaved(calls, repeats, min_repeat_s=min_repeat_s)
        r["bg_load_cores"], r["steal_cores"] = load.cores()
        r["timing_attempts"] = attempt + 1
        if r["bg_load_cores"] is None or r["bg_load_cores"] <= bg_threshold:
            break
        r["bg_busy"] = busy_processes()
        if wait_idle_s and attempt < 2:
            log(f"  ({w.name}: other processes used {r['bg_load_cores']:.2f} cores while timing; "
                f"timing again: {r['bg_busy']})", flush=True)
    if r["bg_load_cores"] is not None and r["bg_load_cores"] <= bg_threshold:
        r.pop("bg_busy", None)
    r["iters_per_repeat"] = iters
    ms = {k: (v * 1e3 if v is not None else None) for k, v in times.items()}
    r["eager_ms"], r["tc_ms"], r["kiln_ms"] = ms["eager"], ms["tc"], ms["kiln"]
    copy_s = times["copy"]
    copied = n_copy * 4 * 2
    r["copy_gbps"] = copied / copy_s / 1e9
    r["floor_ms"] = w.bytes_moved / (copied / copy_s) * 1e3

    def ratio(a, b):
        return a / b if a is not None and b is not None and b > 0 else None
    r["kiln_x_eager"] = ratio(r["eager_ms"], r["kiln_ms"])
    r["kiln_x_tc"] = ratio(r["tc_ms"], r["kiln_ms"])
    r["tc_x_eager"] = ratio(r["eager_ms"], r["tc_ms"])
    r["kiln_over_floor"] = ratio(r["kiln_ms"], r["floor_ms"])
    r["tc_over_floor"] = ratio(r["tc_ms"], r["floor_ms"])
    if kf is not None:
        # the timed calls must have been cache hits of the one compiled program
        import kiln
        c = kiln.counters()
        r["kiln_counters_after"] = {k: c[k] for k in
                                    ("captures", "cache_hits", "recompiles", "graph_breaks",
                                     "fallback_ops", "eager_calls")}
    del args, src, kf, tf
    gc.collect()
    return r



def _proc_cpu():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            comm = st[st.index("(") + 1: st.rindex(")")]
            v = st[st.rindex(")") + 2:].split()
            out[int(d)] = (comm, int(v[11]) + int(v[12]), int(v[1]))   # utime + stime, ppid
        except (OSError, ValueError, IndexError):
            pass
    return out


def _cmdline(pid, comm, width=70):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        args = [a.decode(errors="replace") for a in args if a]
        if args:
            args[0] = os.path.basename(args[0])
            text = " ".join(" ".join(args).split())
            return text if len(text) <= width else text[: width - 3] + "..."
    except OSError:
        pass
    return comm


def busy_processes(interval=0.3, n=3):
    """The n other processes that used the most CPU during the next `interval` seconds, as text
    ('' when none was busy). Processes started by this one (e.g. Inductor's compile workers)
    are marked 'child of this run'."""
    tck = os.sysconf("SC_CLK_TCK")
    a = _proc_cpu()
    time.sleep(interval)
    b = _proc_cpu()
    me = os.getpid()

    def ours(pid):
        for _ in range(64):
            pid = b.get(pid, (None, None, 0))[2]
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False
    rows = []
    for pid, (comm, t, _) in b.items():
        if pid == me or pid not in a:
            continue
        pct = 100.0 * (t - a[pid][1]) / tck / interval
        if pct >= 5:
            rows.append((pct, pid, comm))
    rows.sort(reverse=True)
    return ", ".join(f"[{pid}{', child of this run' if ours(pid) else ''}, {pct:.0f}%] {_cmdline(pid, comm)}"
                     for pct, pid, comm in rows[:n]) or "(only short-lived processes)"


def wait_idle(max_wait_s, threshold, window_s=0.5, log=print):
    """Waits (at most max_wait_s) until other processes use < threshold cores over a window.
    Returns the seconds waited."""
    if max_wait_s <= 0:
        return 0.0
    t0 = time.perf_counter()
    told = False
    while time.perf_counter() - t0 < max_wait_s:
        load = CpuLoad()
        time.sleep(window_s)
        other, _ = load.cores()
        if other is None or other < threshold:
            break
        if not told:
            log(f"  (waiting up to {max_wait_s:.0f} s for other processes to go idle: "
                f"{other:.2f} cores busy; {busy_processes()})", flush=True)
            told = True
    return time.perf_counter() - t0
