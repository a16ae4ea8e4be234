"""pytest setup for kiln's end-to-end tests: every test starts seeded and with kiln reset."""

import random
import warnings

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
