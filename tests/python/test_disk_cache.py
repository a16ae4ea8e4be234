"""The disk cache of compiled kernels (Note [Disk cache] in support/disk_cache.h): a second
process loads the CPU objects the first wrote instead of running LLVM, with bitwise the same
results and kernels; corrupt entries are recompiled; KILN_CACHE=0 writes nothing."""

import json
import os

import torch

import kiln
from fresh_python import run_python

# Several kernels (pointwise, a row reduction, a product with an epilogue); results saved bitwise.
_PROGRAM = r"""
import json, sys, torch, kiln
torch.manual_seed(0)
x, w = torch.randn(33, 70), torch.randn(70, 19)
f = kiln.compile(lambda x, w: (torch.softmax(x * 1.5, -1) @ w).tanh() + x.sum())
f(x, w)
out = f(x, w)
torch.save(out, sys.argv[1])
info = kiln.cache_info()["cpu"]
print(json.dumps({"hits": info["hits"], "misses": info["misses"], "writes": info["writes"],
                  "entries": info["entries"], "source": [k.source for k in kiln.kernels(f)]}))
"""


def _run(tmp_path, name, **env):
    out_file = str(tmp_path / f"{name}.pt")
    res = run_python(_PROGRAM, out_file, **env)
    return json.loads(res.stdout.strip().splitlines()[-1]), torch.load(out_file)


def test_second_process_loads_the_objects(tmp_path):
    cache = str(tmp_path / "cache")
    first, out1 = _run(tmp_path, "first", KILN_CACHE_DIR=cache)
    assert first["writes"] >= 1 and first["hits"] == 0
    second, out2 = _run(tmp_path, "second", KILN_CACHE_DIR=cache)
    assert second["hits"] == first["writes"] and second["writes"] == 0 and second["misses"] == 0
    assert second["entries"] == first["entries"]
    assert torch.equal(out1, out2) and second["source"] == first["source"]


def test_corrupt_entries_are_recompiled(tmp_path):
    cache = str(tmp_path / "cache")
    first, out1 = _run(tmp_path, "first", KILN_CACHE_DIR=cache)
    for root, _, files in os.walk(cache):
        for name in files:
            path = os.path.join(root, name)
            data = bytearray(open(path, "rb").read())
            data[len(data) // 2] ^= 0xFF
            open(path, "wb").write(bytes(data))
    again, out2 = _run(tmp_path, "again", KILN_CACHE_DIR=cache)
    assert again["hits"] == 0 and again["writes"] == first["writes"]
    assert torch.equal(out1, out2)
    third, _ = _run(tmp_path, "third", KILN_CACHE_DIR=cache)
    assert third["hits"] == first["writes"]


def test_cache_off_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    info, _ = _run(tmp_path, "off", KILN_CACHE_DIR=str(cache), KILN_CACHE="0")
    assert info["writes"] == 0 and info["hits"] == 0 and not cache.exists()


def test_cache_info_and_clear(tmp_path):
    with kiln.config.patch(cache_dir=str(tmp_path / "c")):
        f = kiln.compile(lambda x: torch.sigmoid(x) * 3 - 1)
        f(torch.randn(7, 9))
        info = kiln.cache_info()
        assert info["enabled"] and info["cpu"]["dir"] == str(tmp_path / "c" / "cpu")
        assert info["cpu"]["entries"] >= 1 and info["cpu"]["bytes"] > 0
        assert kiln.clear_cache() == info["cpu"]["entries"] + info["cuda"]["entries"]
        assert kiln.cache_info()["cpu"]["entries"] == 0
