"""Model blocks for kiln's model suite (issue 4): compact but faithful blocks of real
architectures, in plain PyTorch, randomly initialised with a fixed seed (no downloads).

Each block is an nn.Module with
  name            a short unique name (also the key in BLOCKS)
  make_inputs(seed=0) -> tuple of input tensors (representative small-but-real sizes)
  forward(*inputs)

Build one with `build(name)` (or `build_all()`); `small=True` gives the same architecture at
reduced sizes (for quick checks). Use them in inference mode: `.eval()` and `torch.no_grad()`.

    import models
    m = models.build("convnext")
    with torch.no_grad():
        y = m(*m.make_inputs())

Blocks (full sizes; eager forward roughly 1-50 ms on a 2-core CPU):
  mlp          Linear-GELU-Linear + residual + LayerNorm             x: 8x128x512
  attention    hand-written MHA: qkv linear, q@k^T/sqrt(d), softmax, @v, out proj; 8x128x512, 8 heads
  convnext     ConvNeXt block: dwconv7x7, LN over channels-last (permute), MLP(GELU), layer scale, residual
  swin         Swin block (shifted windows): LN, roll, window partition, qkv, scores + relative
               position bias gather + shift mask, softmax, proj, window reverse, roll back, MLP
  decoder_kv   Llama-style decoder layer, one decode chunk with a KV cache: RMSNorm, q/k/v, RoPE
               (rotate_half via cat/neg), cache update by torch.cat, causal masked_fill, SiLU-gated MLP
  decoder_static  the same layer, one-token decode step as Meta's reference Llama: preallocated
               caches (B, max_len, heads, hd), arguments, updated by slice assignment in place
  decoder_prefill  the same layer as a prefill into a preallocated static cache in module buffers
               (HF StaticCache: in-place index_copy_), F.scaled_dot_product_attention(is_causal=True)
  dlrm         DLRM: bottom MLP, EmbeddingBag tables (sum, offsets), pairwise dot interaction
               via bmm + triu indices, top MLP with sigmoid
  lstm         LSTM cell written by hand (two linears, sigmoid/tanh gates), unrolled over 8 steps
  whisper_frontend  Whisper encoder stem: conv1d(k3)+GELU, conv1d(k3, stride 2)+GELU, permute,
               + positional embedding, LayerNorm
  mbconv       EfficientNet MBConv: expand 1x1 conv + BN(eval) + SiLU, depthwise 3x3 + BN + SiLU,
               squeeze-excitation (adaptive avg pool, two 1x1 convs, sigmoid gate), project + BN, residual
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCKS = {}


def register(cls):
    BLOCKS[cls.name] = cls
    return cls


class Block(nn.Module):
    name = "?"

    def _randn(self, gen, *shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32)

    def make_inputs(self, seed=0):
        raise NotImplementedError


def _randomize_bn(bn, gen):
    """Non-trivial running stats and affine parameters, so eval BN is not the identity."""
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 0.5 + 0.75)
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) * 0.5 + 0.75)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)


# ---------------------------------------------------------------------------------------------
@register
class MLPBlock(Block):
    """Transformer MLP sub-block, post-norm: LN(x + fc2(gelu(fc1(x))))."""
    name = "mlp"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.S, self.D, self.H = (2, 32, 128, 256) if small else (8, 128, 512, 1024)
        self.fc1 = nn.Linear(self.D, self.H)
        self.fc2 = nn.Linear(self.H, self.D)
        self.norm = nn.LayerNorm(self.D)

    def forward(self, x):
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.S, self.D),)


# ---------------------------------------------------------------------------------------------
@register
class AttentionBlock(Block):
    """Multi-head self-attention written by hand (no SDPA)."""
    name = "attention"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.S, self.D, self.nh = (2, 32, 128, 4) if small else (8, 128, 512, 8)
        self.hd = self.D // self.nh
        self.qkv = nn.Linear(self.D, 3 * self.D)
        self.proj = nn.Linear(self.D, self.D)

    def forward(self, x):
        B, S, D = x.shape
        qkv = self.qkv(x).view(B, S, 3, self.nh, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
        attn = scores.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, S, D)
        return self.proj(out)

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.S, self.D),)


# ---------------------------------------------------------------------------------------------
@register
class ConvNeXtBlock(Block):
    """ConvNeXt block (Liu et al. 2022), as in the reference implementation:
    dwconv 7x7 -> permute to NHWC -> LayerNorm -> Linear(4x) -> GELU -> Linear -> gamma ->
    permute back -> residual (drop path = identity in eval)."""
    name = "convnext"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.C, self.HW = (2, 32, 14) if small else (8, 96, 28)
        C = self.C
        self.dwconv = nn.Conv2d(C, C, kernel_size=7, padding=3, groups=C)
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self.pwconv1 = nn.Linear(C, 4 * C)
        self.pwconv2 = nn.Linear(4 * C, C)
        # layer scale: real models init at 1e-6; use a random scale so the branch matters
        self.gamma = nn.Parameter(torch.rand(C) * 0.5 + 0.5)

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = F.gelu(x)
        x = self.pwconv2(x)
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # back to (N, C, H, W)
        return shortcut + x

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.C, self.HW, self.HW),)


# ---------------------------------------------------------------------------------------------
def window_partition(x, ws):
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows, ws, H, W):
    B = int(windows.shape[0] / (H * W / ws / ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


@register
class SwinBlock(Block):
    """Swin Transformer block with shifted windows (Liu et al. 2021), following the reference
    SwinTransformerBlock / WindowAttention: relative position bias gathered from a table with
    a precomputed index, shift by torch.roll with the precomputed attention mask."""
    name = "swin"

    def __init__(self, small=False):
        super().__init__()
        if small:
            self.B, self.HW, self.C, self.nh, self.ws = 2, 14, 32, 2, 7
        else:
            self.B, self.HW, self.C, self.nh, self.ws = 8, 28, 96, 3, 7
        self.shift = self.ws // 2
        C, nh, ws = self.C, self.nh, self.ws
        self.hd = C // nh
        self.scale = self.hd ** -0.5
        self.norm1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.norm2 = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, 4 * C)
        self.fc2 = nn.Linear(4 * C, C)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, nh) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        # attention mask for the shifted windows
        H = W = self.HW
        img_mask = torch.zeros(1, H, W, 1)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -self.shift), slice(-self.shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -self.shift), slice(-self.shift, None)):
                img_mask[:, hs, wsl, :] = cnt
                cnt += 1
        mw = window_partition(img_mask, ws).view(-1, ws * ws)
        attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        self.register_buffer("attn_mask", attn_mask)

    def window_attention(self, x, mask):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.nh, C // self.nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
            N, N, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        nW = mask.shape[0]
        attn = attn.view(B_ // nW, nW, self.nh, N, N) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.nh, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)

    def forward(self, x):
        H = W = self.HW
        B, L, C = x.shape
        ws, s = self.ws, self.shift
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        xw = window_partition(x, ws).view(-1, ws * ws, C)
        aw = self.window_attention(xw, self.attn_mask).view(-1, ws, ws, C)
        x = window_reverse(aw, ws, H, W)
        x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + x.view(B, H * W, C)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.HW * self.HW, self.C),)


# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(dim) * 0.5 + 0.75)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rope_tables(max_len, hd, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    t = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class _LlamaLayer(Block):
    """Shared weights/helpers of the Llama-style decoder layer (pre-norm, RMSNorm, RoPE,
    SiLU-gated MLP, no biases)."""

    def __init__(self, small):
        super().__init__()
        if small:
            self.B, self.D, self.nh, self.F, self.max_len = 2, 128, 4, 256, 64
        else:
            self.B, self.D, self.nh, self.F, self.max_len = 8, 512, 8, 1376, 256
        self.hd = self.D // self.nh
        D, Fh = self.D, self.F
        self.input_norm = RMSNorm(D)
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.post_norm = RMSNorm(D)
        self.gate_proj = nn.Linear(D, Fh, bias=False)
        self.up_proj = nn.Linear(D, Fh, bias=False)
        self.down_proj = nn.Linear(Fh, D, bias=False)
        cos, sin = rope_tables(self.max_len, self.hd)
        self.register_buffer("cos_cached", cos)
        self.register_buffer("sin_cached", sin)

    def qkv(self, h, start):
        B, T, D = h.shape
        q = self.q_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        cos = self.cos_cached[start:start + T]
        sin = self.sin_cached[start:start + T]
        q, k = apply_rotary(q, k, cos, sin)
        return q, k, v

    def mlp(self, x):
        h = self.post_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


@register
class DecoderKVBlock(_LlamaLayer):
    """One decode chunk (T new tokens after `past` cached ones): the KV cache is extended with
    torch.cat and returned; causal mask by masked_fill; attention written out."""
    name = "decoder_kv"

    def __init__(self, small=False):
        super().__init__(small)
        self.T, self.past = (4, 16) if small else (16, 128)
        L = self.past + self.T
        # query i (absolute position past+i) may see keys 0..past+i
        mask = torch.arange(L)[None, :] > (self.past + torch.arange(self.T))[:, None]
        self.register_buffer("causal_mask", mask)

    def forward(self, x, k_cache, v_cache):
        B, T, D = x.shape
        h = self.input_norm(x)
        q, k, v = self.qkv(h, self.past)
        k = torch.cat([k_cache, k], dim=2)
        v = torch.cat([v_cache, v], dim=2)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        scores = scores.masked_fill(self.causal_mask, float("-inf"))
        attn = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(attn, v).transpose(1, 2).reshape(B, T, D)
        x = x + self.o_proj(o)
        return self.mlp(x), k, v

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.T, self.D),
                self._randn(g, self.B, self.nh, self.past, self.hd),
                self._randn(g, self.B, self.nh, self.past, self.hd))


@register
class DecoderStaticBlock(_LlamaLayer):
    """One-token decode step as Meta's reference Llama writes it: preallocated caches of layout
    (batch, max_len, heads, head_dim), updated by slice assignment
    `cache_k[:bsz, pos:pos + T] = xk` (the caches are arguments, updated in place), attention
    over the filled part of the cache (no mask needed for the newest token)."""
    name = "decoder_static"

    def __init__(self, small=False):
        super().__init__(small)
        self.T, self.pos = (1, 16) if small else (1, 128)

    def forward(self, x, cache_k, cache_v):
        bsz, T, D = x.shape
        pos = self.pos
        h = self.input_norm(x)
        xq = self.q_proj(h).view(bsz, T, self.nh, self.hd)
        xk = self.k_proj(h).view(bsz, T, self.nh, self.hd)
        xv = self.v_proj(h).view(bsz, T, self.nh, self.hd)
        cos = self.cos_cached[pos:pos + T].view(1, T, 1, self.hd)
        sin = self.sin_cached[pos:pos + T].view(1, T, 1, self.hd)
        xq, xk = apply_rotary(xq, xk, cos, sin)
        cache_k[:bsz, pos:pos + T] = xk
        cache_v[:bsz, pos:pos + T] = xv
        keys = cache_k[:bsz, :pos + T].transpose(1, 2)
        values = cache_v[:bsz, :pos + T].transpose(1, 2)
        scores = torch.matmul(xq.transpose(1, 2), keys.transpose(2, 3)) / math.sqrt(self.hd)
        attn = F.softmax(scores, dim=-1)
        o = torch.matmul(attn, values).transpose(1, 2).reshape(bsz, T, D)
        x = x + self.o_proj(o)
        return self.mlp(x)

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        cache_k = torch.zeros(self.B, self.max_len, self.nh, self.hd)
        cache_v = torch.zeros(self.B, self.max_len, self.nh, self.hd)
        cache_k[:, :self.pos] = self._randn(g, self.B, self.pos, self.nh, self.hd)
        cache_v[:, :self.pos] = self._randn(g, self.B, self.pos, self.nh, self.hd)
        return (self._randn(g, self.B, self.T, self.D), cache_k, cache_v)


@register
class DecoderPrefillBlock(_LlamaLayer):
    """Prefill of S tokens into a preallocated static KV cache held in module buffers, as HF's
    StaticCache does it: `k_cache.index_copy_(2, cache_position, k)` (in place, the cache is
    module state); attention of the chunk by F.scaled_dot_product_attention(is_causal=True).
    Returns the hidden states; the caches are read back from the buffers."""
    name = "decoder_prefill"

    def __init__(self, small=False):
        super().__init__(small)
        self.S = 16 if small else 128
        self.register_buffer("k_cache", torch.zeros(self.B, self.nh, self.max_len, self.hd))
        self.register_buffer("v_cache", torch.zeros(self.B, self.nh, self.max_len, self.hd))

    def forward(self, x, cache_position):
        B, S, D = x.shape
        h = self.input_norm(x)
        q, k, v = self.qkv(h, 0)
        self.k_cache.index_copy_(2, cache_position, k)
        self.v_cache.index_copy_(2, cache_position, v)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o = o.transpose(1, 2).reshape(B, S, D)
        x = x + self.o_proj(o)
        return self.mlp(x)

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.S, self.D), torch.arange(self.S))


# ---------------------------------------------------------------------------------------------
def _mlp(sizes, last_act=None):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if last_act is not None:
        layers.append(last_act)
    return nn.Sequential(*layers)


@register
class DLRMBlock(Block):
    """DLRM (Naumov et al. 2019) forward: bottom MLP on dense features, one EmbeddingBag
    (sum) per sparse feature with offsets, dot interaction of all pairs via bmm + the strict
    lower-triangle indices, concat with the dense vector, top MLP, sigmoid."""
    name = "dlrm"

    def __init__(self, small=False):
        super().__init__()
        if small:
            self.B, self.n_dense, self.n_tables, self.rows, self.dim, self.bag = 16, 13, 4, 1000, 16, 3
            bot, top = [13, 64, 16], [64, 32, 1]
        else:
            self.B, self.n_dense, self.n_tables, self.rows, self.dim, self.bag = 512, 13, 8, 20000, 64, 4
            bot, top = [13, 512, 256, 64], [512, 256, 1]
        self.bot_l = _mlp(bot)
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(self.rows, self.dim, mode="sum")
                                   for _ in range(self.n_tables))
        n = self.n_tables + 1
        li, lj = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)
        top = [self.dim + n * (n - 1) // 2] + top[1:]
        self.top_l = _mlp(top, last_act=nn.Sigmoid())

    def interact(self, x, ly):
        B, d = x.shape
        T = torch.cat([x] + ly, dim=1).view(B, -1, d)
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        Zflat = Z[:, self.li, self.lj]
        return torch.cat([x, Zflat], dim=1)

    def forward(self, dense, indices, offsets):
        x = self.bot_l(dense)
        ly = [emb(indices[k], offsets[k]) for k, emb in enumerate(self.emb_l)]
        return self.top_l(self.interact(x, ly))

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        dense = torch.rand(self.B, self.n_dense, generator=g)
        # multi-hot bags: B * bag lookups per table, split at random into B non-empty bags
        total = self.B * self.bag
        offsets = torch.stack([
            torch.cat([torch.zeros(1, dtype=torch.int64),
                       (torch.randperm(total - 1, generator=g)[: self.B - 1] + 1).sort().values])
            for _ in range(self.n_tables)])
        indices = torch.randint(0, self.rows, (self.n_tables, total), generator=g)
        return dense, indices, offsets


# ---------------------------------------------------------------------------------------------
@register
class LSTMBlock(Block):
    """A hand-written LSTM cell (as torch.nn.LSTMCell computes it), unrolled over T steps."""
    name = "lstm"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.I, self.H, self.T = (4, 32, 64, 3) if small else (32, 256, 512, 8)
        self.ih = nn.Linear(self.I, 4 * self.H)
        self.hh = nn.Linear(self.H, 4 * self.H)

    def forward(self, xs, h, c):
        outs = []
        for t in range(xs.shape[0]):
            gates = self.ih(xs[t]) + self.hh(h)
            i, f, g, o = gates.chunk(4, dim=1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), h, c

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.T, self.B, self.I), self._randn(g, self.B, self.H),
                self._randn(g, self.B, self.H))


# ---------------------------------------------------------------------------------------------
def sinusoids(length, channels, max_timescale=10000):
    """Whisper's sinusoidal positional embedding."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


@register
class WhisperFrontEnd(Block):
    """Whisper audio encoder stem (Radford et al. 2022, whisper-tiny width 384): log-mel
    (80 x frames) -> conv1d k3 + GELU -> conv1d k3 stride 2 + GELU -> (B, T, C) + positional
    embedding -> LayerNorm (the stem, plus the final ln_post applied to it here)."""
    name = "whisper_frontend"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.n_mels, self.C, self.frames = (1, 80, 64, 200) if small else (2, 80, 384, 1000)
        self.conv1 = nn.Conv1d(self.n_mels, self.C, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(self.C, self.C, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(self.frames // 2, self.C))
        self.ln = nn.LayerNorm(self.C)

    def forward(self, mel):
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        x = x.permute(0, 2, 1)
        x = x + self.positional_embedding
        return self.ln(x)

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.n_mels, self.frames),)


# ---------------------------------------------------------------------------------------------
@register
class MBConvBlock(Block):
    """EfficientNet MBConv with squeeze-excitation (Tan & Le 2019), stride 1, in == out, so
    with the residual (drop-connect = identity in eval). Expand ratio 6, SE ratio 0.25."""
    name = "mbconv"

    def __init__(self, small=False):
        super().__init__()
        self.B, self.C, self.HW = (2, 16, 14) if small else (16, 80, 14)
        C = self.C
        E = 6 * C
        S = max(1, int(C * 0.25))
        self.expand = nn.Conv2d(C, E, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(E, eps=1e-3)
        self.dw = nn.Conv2d(E, E, 3, padding=1, groups=E, bias=False)
        self.bn1 = nn.BatchNorm2d(E, eps=1e-3)
        self.se_reduce = nn.Conv2d(E, S, 1)
        self.se_expand = nn.Conv2d(S, E, 1)
        self.project = nn.Conv2d(E, C, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(C, eps=1e-3)
        g = torch.Generator().manual_seed(1234)
        for bn in (self.bn0, self.bn1, self.bn2):
            _randomize_bn(bn, g)

    def forward(self, inputs):
        x = F.silu(self.bn0(self.expand(inputs)))
        x = F.silu(self.bn1(self.dw(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.se_expand(F.silu(self.se_reduce(s)))
        x = torch.sigmoid(s) * x
        x = self.bn2(self.project(x))
        return x + inputs

    def make_inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (self._randn(g, self.B, self.C, self.HW, self.HW),)


# ---------------------------------------------------------------------------------------------
NAMES = list(BLOCKS)


def build(name, small=False, seed=0):
    """A fresh block in eval mode, weights drawn from torch's default init under `seed`."""
    cls = BLOCKS[name]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        m = cls(small=small)
    finally:
        torch.random.set_rng_state(state)
    return m.eval()


def build_all(small=False, seed=0):
    return [build(n, small=small, seed=seed) for n in NAMES]
