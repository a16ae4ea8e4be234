"""Workloads whose sizes change from call to call (the dynamic-shape benchmark, run_dynamic.py).

Each workload builds (fn, calls, steady[, reset]): `calls` is the list of argument tuples of
one run, in order -- 16 sizes, then the same sizes again, or a decode loop's steps -- `steady`
the indices of three calls timed one by one (None: none), `reset` what puts the state the calls
write (a KV cache) back before each run. Random weights and inputs, fixed seeds; nothing is downloaded.
"""

import math

import torch
import torch.nn.functional as F

SIZES = [16, 24, 1, 7, 33, 64, 3, 128, 5, 48, 96, 2, 17, 80, 11, 40]
STEADY = [6, 4, 7]  # calls timed one by one: the 3rd, 33rd and 128th size of SIZES


class Workload:
    def __init__(self, name, build, what):
        self.name, self.build, self.what = name, build, what


def _mlp():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).eval()
    calls = [(torch.randn(n, 256),) for n in SIZES * 2]
    return m, calls, STEADY


def _llama_ffn():
    torch.manual_seed(1)
    w1, w3, w2 = torch.randn(688, 256) * 0.05, torch.randn(688, 256) * 0.05, torch.randn(256, 688) * 0.05

    def ffn(x):
        return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    calls = [(torch.randn(n, 256),) for n in SIZES * 2]
    return ffn, calls, STEADY


def _rms_norm():
    torch.manual_seed(2)
    w = torch.randn(1024)

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    calls = [(torch.randn(n * 16, 1024),) for n in SIZES * 2]
    return rms, calls, STEADY


def _masked_softmax():
    torch.manual_seed(3)

    def masked_softmax(scores, mask):
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)

    calls = []
    for n in SIZES * 2:
        length = n + 8
        calls.append((torch.randn(32, length), torch.arange(length)[None, :] < torch.randint(1, length + 1, (32, 1))))
    return masked_softmax, calls, STEADY


class _GptBlock(torch.nn.Module):
    def __init__(self, c=128, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(c), torch.nn.LayerNorm(c)
        self.qkv, self.proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        self.fc, self.out = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def _gpt_block():
    torch.manual_seed(4)
    m = _GptBlock().eval()
    calls = [(torch.randn(1, n + 8, 128),) for n in SIZES * 2]
    return m, calls, STEADY


def _gpt_block_batch():
    torch.manual_seed(4)
    m = _GptBlock().eval()
    calls = [(torch.randn(n, 32, 128),) for n in [2, 3, 1, 5, 4, 8, 6, 16, 7, 12, 9, 10, 11, 13, 14, 15] * 2]
    return m, calls, STEADY


def _gpt_decode_list_cache():
    """A GPT-style decode step whose KV cache is a dict of Python lists the step appends to."""
    torch.manual_seed(5)
    c = 128
    wq, wk, wv = (torch.randn(c, c) * 0.05 for _ in range(3))

    def step(x, cache):
        cache["k"].append(x @ wk)
        cache["v"].append(x @ wv)
        k, v = torch.cat(cache["k"], 1), torch.cat(cache["v"], 1)
        att = ((x @ wq) @ k.transpose(1, 2) / math.sqrt(c)).softmax(-1)
        return att @ v

    cache = {"k": [], "v": []}

    def reset():
        cache["k"].clear()
        cache["v"].clear()

    return step, [(torch.randn(1, 1, c), cache) for _ in range(32)], None, reset


def _llama_decode_start_pos():
    """A LLaMA-style decode step: `start_pos` an int, the cache a preallocated buffer."""
    torch.manual_seed(6)
    c, max_t = 128, 64
    wq, wk, wv = (torch.randn(c, c) * 0.05 for _ in range(3))
    cache_k, cache_v = torch.zeros(1, max_t, c), torch.zeros(1, max_t, c)

    def step(x, start_pos):
        cache_k[:, start_pos:start_pos + 1] = x @ wk
        cache_v[:, start_pos:start_pos + 1] = x @ wv
        k, v = cache_k[:, :start_pos + 1], cache_v[:, :start_pos + 1]
        att = ((x @ wq) @ k.transpose(1, 2) / math.sqrt(c)).softmax(-1)
        return att @ v

    calls = [(torch.randn(1, 1, c), pos) for pos in range(32)]
    def reset():
        cache_k.zero_()
        cache_v.zero_()

    return step, calls, None, reset


WORKLOADS = [
    Workload("mlp_batch", _mlp, "Linear-GELU-Linear over 16 batch sizes (1..128), twice"),
    Workload("llama_ffn_tokens", _llama_ffn, "SwiGLU feed-forward over 16 token counts (1..128), twice"),
    Workload("rmsnorm_rows", _rms_norm, "RMSNorm over 16 row counts (16..2048) x 1024, twice"),
    Workload("masked_softmax_len", _masked_softmax, "masked softmax over 16 lengths (9..136), twice"),
    Workload("gpt_block_seqlen", _gpt_block, "GPT block over 16 sequence lengths (9..136), twice"),
    Workload("gpt_block_batch", _gpt_block_batch, "GPT block (T = 32) over 16 batch sizes (1..16), twice"),
    Workload("gpt_decode_list", _gpt_decode_list_cache, "32 decode steps, KV cache a dict of Python lists"),
    Workload("llama_decode_pos", _llama_decode_start_pos, "32 decode steps, start_pos an int, preallocated cache"),
]
BY_NAME = {w.name: w for w in WORKLOADS}
