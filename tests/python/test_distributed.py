"""A kiln-compiled module inside DistributedDataParallel and inside FSDP2's fully_shard (gloo, 2
processes on this machine): after several steps its gradients and parameters equal eager's.
kiln does no communication of its own: DDP's gradient hooks fire as the compiled backward hands
autograd its gradients; FSDP's hooks gather the parameters before the compiled forward reads
them (kiln reads parameters from the module on every call) and reduce-scatter the gradients
after the compiled backward."""

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

STEPS = 4


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    import kiln
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
        eager = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        compiled = nn.parallel.DistributedDataParallel(kiln.compile(copy.deepcopy(base)))
        opt_e = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
        opt_k = torch.optim.SGD(compiled.parameters(), lr=0.1, momentum=0.9)
        worst = 0.0
        for step in range(STEPS):
            g = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own batch
            x, y = torch.randn(6, 10, generator=g), torch.randint(0, 4, (6,), generator=g)
            for model, opt in ((eager, opt_e), (compiled, opt_k)):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
            for a, b in zip(compiled.parameters(), eager.parameters()):
                worst = max(worst, float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-6)))
            opt_e.step()
            opt_k.step()
        for a, b in zip(compiled.parameters(), eager.parameters()):
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)))
        c = kiln.counters()
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(f"{worst} {c['compiled_backward_calls']} {c['eager_calls']}\n")
    finally:
        dist.destroy_process_group()


def test_compiled_module_inside_ddp_trains_like_eager_ddp():
    with tempfile.TemporaryDirectory() as d:
        init_file = os.path.join(d, "init")
        mp.spawn(_worker, args=(2, init_file, d), nprocs=2, join=True)
        for rank in range(2):
            worst, backward_calls, eager_calls = open(os.path.join(d, f"rank{rank}.txt")).read().split()
            assert float(worst) < 5e-5, (rank, worst)
            assert int(backward_calls) == STEPS - 1 and int(eager_calls) == 0


def _fsdp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    import kiln
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
        params = {}
        for mode in ("eager", "kiln"):
            model = copy.deepcopy(base)
            if mode == "kiln":
                model = kiln.compile(model)
            fully_shard(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            for step in range(STEPS):
                g = torch.Generator().manual_seed(1000 * step + rank)
                x, y = torch.randn(6, 10, generator=g), torch.randint(0, 4, (6,), generator=g)
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            params[mode] = [p.full_tensor().detach().clone() for p in model.parameters()]
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))
                    for a, b in zip(params["kiln"], params["eager"]))
        c = kiln.counters()
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(f"{worst} {c['compiled_backward_calls']} {c['eager_calls']}\n")
    finally:
        dist.destroy_process_group()


def test_compiled_module_inside_fsdp2_trains_like_eager_fsdp2():
    with tempfile.TemporaryDirectory() as d:
        init_file = os.path.join(d, "init")
        mp.spawn(_fsdp_worker, args=(2, init_file, d), nprocs=2, join=True)
        for rank in range(2):
            worst, backward_calls, eager_calls = open(os.path.join(d, f"rank{rank}.txt")).read().split()
            assert float(worst) < 5e-5, (rank, worst)
            assert int(backward_calls) == STEPS - 1 and int(eager_calls) == 0
