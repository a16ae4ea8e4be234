"""Runs code in a new interpreter, for what only a fresh process shows (import costs, what the
first capture loads, the disk cache seen by a second process)."""

import os
import subprocess
import sys


def run_python(code, *argv, **env):
    """Runs `code` with this interpreter's flags (-S keeps importing this checkout's kiln) and
    its sys.path, `env` added to the environment; returns the result (asserting exit status 0)."""
    flags = ["-S"] if sys.flags.no_site else []
    res = subprocess.run([sys.executable, *flags, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ":".join(sys.path), **env})
    assert res.returncode == 0, res.stderr
    return res
