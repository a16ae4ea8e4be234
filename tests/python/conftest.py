"""pytest setup for kiln's end-to-end tests: every test starts seeded and with kiln reset."""

import atexit
import os
import random
import shutil
import tempfile
import warnings

# The suite compiles thousands of programs: their disk cache (Note [Disk cache]) goes to a
# directory of this run, removed at exit, not into the user's ~/.cache/kiln. Set before kiln
# is imported (it reads KILN_CACHE_DIR then); child processes of tests inherit it.
if "KILN_CACHE_DIR" not in os.environ:
    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-test-cache-")
    atexit.register(shutil.rmtree, os.environ["KILN_CACHE_DIR"], True)

import numpy as np
import pytest
import torch

import kiln

SEED = 20240601


@pytest.fixture(autouse=True)
def _seed_and_reset():
    """Seeds Python, NumPy and torch, and forgets every compiled program and counter, so each
    test sees the same random inputs and counts from zero whatever ran before it."""
    random.seed(SEED)
    np.random.seed(SEED % 2**32)
    torch.manual_seed(SEED)
    kiln.reset()
    grad = torch.is_grad_enabled()
    dtype = torch.get_default_dtype()
    yield
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    kiln.reset()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
