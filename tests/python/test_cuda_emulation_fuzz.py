"""A fixed range of the fuzzer's programs through the CUDA code generator on the CPU emulation
(cuda_emulation_fuzz.py), in float32 and with their float32 values as bfloat16: the CUDA
backend's broad regression guard on machines without a GPU. Longer runs: the script itself."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_cuda_codegen import needs_emulation  # noqa: E402

SEEDS = range(0, 24)


@needs_emulation
@pytest.mark.parametrize("half", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fuzz_programs_match_eager_in_emulation(half):
    import cuda_emulation_fuzz as emu
    results = {s: emu.check(s, half) for s in SEEDS}
    bad = {s: r for s, r in results.items() if r[0] not in ("ok", "skip")}
    assert not bad, "\n".join(f"seed {s}: {st}: {msg}" for s, (st, msg) in bad.items())
    assert sum(r[0] == "ok" for r in results.values()) >= len(SEEDS) // 2  # most programs do run
