"""What a fresh process pays before its first compiled call: `import kiln` and the first
capture load neither Dynamo nor sympy, and KILN_LOG=perf says where a compile's time went."""

from fresh_python import run_python


def test_import_and_capture_do_not_import_dynamo():
    # Importing torch._dynamo costs about a second: the backend is found through the
    # torch_dynamo_backends entry point when torch.compile looks "kiln" up, and the tracer's
    # dispatch handler is disabled for Dynamo only once Dynamo is loaded (_trace.py).
    out = run_python("import sys, torch, kiln\n"
                     "print('torch._dynamo' in sys.modules)\n"
                     "f = kiln.compile(lambda x: torch.softmax(x.sin(), -1))\n"
                     "x = torch.randn(4, 9)\n"
                     "assert torch.allclose(f(x), torch.softmax(x.sin(), -1)) and torch.allclose(f(x), f(x))\n"
                     "print('torch._dynamo' in sys.modules, kiln.counters()['cache_hits'])\n").stdout
    assert out.split() == ["False", "False", "2"], out


def test_first_captures_do_not_import_sympy():
    # autograd.grad's checks of given output gradients and torch.broadcast_shapes import
    # torch.fx's symbolic shapes (sympy, ~0.5 s): the backward capture goes to autograd's engine
    # directly, and kiln broadcasts concrete shapes itself (an attention mask, index tensors).
    out = run_python("import sys, torch, kiln\n"
                     "import torch.nn.functional as F\n"
                     "m = kiln.compile(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),\n"
                     "                                     torch.nn.Linear(16, 1)))\n"
                     "for _ in range(2):\n"
                     "    m(torch.randn(4, 8)).sum().backward()\n"
                     "q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))\n"
                     "mask = torch.rand(2, 1, 1, 6) > 0.3\n"
                     "attn = kiln.compile(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m))\n"
                     "want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                     "assert ((attn(q, k, v, mask) - want).abs().max() < 1e-5).item()  # (torch.testing imports sympy)\n"
                     "x, i, j = torch.randn(5, 7), torch.tensor([[0], [4]]), torch.tensor([1, 6, 2])\n"
                     "gather = kiln.compile(lambda x, i, j: x[i, j] * 2)\n"
                     "assert torch.equal(gather(x, i, j), x[i, j] * 2)\n"
                     "c = kiln.counters()\n"
                     "print('sympy' in sys.modules, c['compiled_backward_calls'])\n").stdout
    assert out.split() == ["False", "1"], out


def test_log_perf_splits_each_compile(tmp_path):
    res = run_python("import torch, kiln\n"
                     "f = kiln.compile(lambda x, w: torch.softmax(x @ w, -1).tanh())\n"
                     "f(torch.randn(16, 8), torch.randn(8, 4))\n",
                     KILN_LOG="perf", KILN_CACHE_DIR=str(tmp_path))
    err = res.stderr
    assert "[kiln perf] <lambda>: capture" in err and "compile" in err, err
    for stage in ("decompose:", "lower_to_loops:", "llvm emit:", "llvm O3:", "llvm machine code:",
                  "disk cache (miss):", "jit load:"):
        assert stage in err, (stage, err)
