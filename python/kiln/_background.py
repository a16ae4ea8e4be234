"""kiln's compile thread (Note [Background compiles]).

Note [Background compiles]: with `kiln.compile(fn, background=True)` (or KILN_BACKGROUND=1) a
call that misses the cache still captures on the calling thread (tracing runs the function, so
its Python side effects happen where the user expects them) and returns that eager result, but
passes and code generation run here, on one worker thread, while the C++ compile releases the
GIL. Until the program is ready, calls whose guards match its entry run eagerly
(counted as eager_calls_while_compiling); the first call after it is ready swaps the program in
(CompiledFunction._swap_ready_entries) and runs compiled. A failed compile becomes the eager
entry a foreground compile would have made, with the same warning or reason. One worker keeps
compiles in order and leaves the other cores to the calling thread's kernels, at a lower
priority (nice 10) so that the calls running eagerly meanwhile come first; graph-break trees
still compile their segments on the calling thread. Python threads that call the function
while it compiles all run eagerly, and threads missing at once may each capture (one entry
then serves). Interpreter exit waits for a running compile; `kiln.wait()` blocks until
every submitted compile is done (tests, benchmarks, and before a knob changes: a knob is read
by the compile while it runs).
"""

import concurrent.futures
import os
import threading

_lock = threading.Lock()
_executor = None
_pending = set()


def submit(fn):
    """Runs fn() on the compile thread; returns its Future."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-compile",
                                                              initializer=_yield_to_callers)
        fut = _executor.submit(fn)
        _pending.add(fut)
    fut.add_done_callback(_done)
    return fut


def _yield_to_callers():
    """Lowers the compile thread's priority (Linux: a thread's own nice value). The point of a
    background compile is that calls do not wait: where the cores are few, the eager calls
    running meanwhile should get them first, and the compile takes what is left."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: an ordinary thread
        pass


def _done(fut):
    with _lock:
        _pending.discard(fut)


def wait(timeout=None):
    """Blocks until every compile submitted so far has finished (or `timeout` seconds passed);
    True when none is left running."""
    with _lock:
        futs = list(_pending)
    if not futs:
        return True
    _, not_done = concurrent.futures.wait(futs, timeout)
    return not not_done
