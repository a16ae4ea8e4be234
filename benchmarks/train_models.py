"""Training workloads for benchmarks/run_training.py: small real architectures plus their loss,
in plain PyTorch, float32, random weights from a seed (nothing downloaded).

Each model's forward takes a batch and returns the scalar loss (as Hugging Face models do when
given labels), so a compiler given the model compiles the loss too. A Workload has
  name, about      short name and one line on what it is
  optimizer        which optimizer column 2 uses, as text
  build(seed)      -> (model in train mode, make_batch); make_batch(seed) -> tuple of tensors
  make_optimizer   params -> the optimizer

The two steps a benchmark times (module-level functions, the same for every workload):
  forward_backward(model, opt, batch)   zero_grad + forward + loss + backward  (column 1)
  train_step(model, opt, batch)         the same + optimizer.step()             (column 2)

Sizes are chosen so that one eager train_step takes roughly 5-40 ms on 2 threads.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def forward_backward(model, opt, batch):
    opt.zero_grad(set_to_none=True)
    loss = model(*batch)
    loss.backward()
    return loss


def train_step(model, opt, batch):
    loss = forward_backward(model, opt, batch)
    opt.step()
    return loss


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
class GPT2Block(nn.Module):
    """GPT-2 block (pre-LayerNorm, causal SDPA, GELU tanh MLP, residual dropout p=0.1), then
    ln_f and a small vocabulary head with cross entropy. Dropout is on the residual branches;
    attention-probability dropout is 0 (SDPA's dropout_p) so SDPA keeps its fused kernel."""

    B, S, D, H, V = 4, 64, 256, 4, 512

    def __init__(self):
        super().__init__()
        D = self.D
        self.ln_1 = nn.LayerNorm(D)
        self.c_attn = nn.Linear(D, 3 * D)
        self.c_proj = nn.Linear(D, D)
        self.ln_2 = nn.LayerNorm(D)
        self.c_fc = nn.Linear(D, 4 * D)
        self.mlp_proj = nn.Linear(4 * D, D)
        self.drop = nn.Dropout(0.1)
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, self.V, bias=False)

    def forward(self, x, targets):
        B, S, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, S, self.H, D // self.H).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.c_proj(a.transpose(1, 2).reshape(B, S, D)))
        x = x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, self.V), targets.view(-1))

    def make_batch(self, seed):
        g = _gen(seed)
        return (torch.randn(self.B, self.S, self.D, generator=g),
                torch.randint(0, self.V, (self.B, self.S), generator=g))


# ---------------------------------------------------------------------------------------------
def rope(x, cos, sin):
    """Rotary embedding, rotate-half form (as Hugging Face's Llama)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaLayer(nn.Module):
    """LLaMA decoder layer: nn.RMSNorm, q/k/v without bias, RoPE, causal SDPA, SwiGLU MLP;
    loss = MSE of the layer's output against a random target."""

    B, S, D, H, F_ = 4, 64, 256, 4, 704

    def __init__(self):
        super().__init__()
        D, hd = self.D, self.D // self.H
        self.input_norm = nn.RMSNorm(D, eps=1e-6)
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.post_norm = nn.RMSNorm(D, eps=1e-6)
        self.gate_proj = nn.Linear(D, self.F_, bias=False)
        self.up_proj = nn.Linear(D, self.F_, bias=False)
        self.down_proj = nn.Linear(self.F_, D, bias=False)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(self.S, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x, target):
        B, S, D = x.shape
        h = self.input_norm(x)
        q, k, v = (p(h).view(B, S, self.H, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rope(q, self.cos, self.sin), rope(k, self.cos, self.sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, S, D))
        h = self.post_norm(x)
        x = x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return F.mse_loss(x, target)

    def make_batch(self, seed):
        g = _gen(seed)
        return (torch.randn(self.B, self.S, self.D, generator=g),
                torch.randn(self.B, self.S, self.D, generator=g))


# ---------------------------------------------------------------------------------------------
class MLPClassifier(nn.Module):
    """Three Linear+ReLU layers and a linear classifier, cross entropy over 10 classes."""

    B, IN, HID, C = 128, 784, 512, 10

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(self.IN, self.HID), nn.ReLU(),
                                 nn.Linear(self.HID, self.HID), nn.ReLU(),
                                 nn.Linear(self.HID, self.HID), nn.ReLU(),
                                 nn.Linear(self.HID, self.C))

    def forward(self, x, labels):
        return F.cross_entropy(self.net(x), labels)

    def make_batch(self, seed):
        g = _gen(seed)
        return (torch.randn(self.B, self.IN, generator=g),
                torch.randint(0, self.C, (self.B,), generator=g))


# ---------------------------------------------------------------------------------------------
class ResNetBlock(nn.Module):
    """ResNet basic block in train mode (batch norm with batch statistics, running stats
    updated): relu(bn2(conv2(relu(bn1(conv1(x))))) + x); loss = mean of squares."""

    B, C, HW = 4, 64, 32

    def __init__(self):
        super().__init__()
        C = self.C
        self.conv1 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(C)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + x)
        return out.pow(2).mean()

    def make_batch(self, seed):
        return (torch.randn(self.B, self.C, self.HW, self.HW, generator=_gen(seed)),)


# ---------------------------------------------------------------------------------------------
class BertLayer(nn.Module):
    """BERT encoder layer (post-LayerNorm): self-attention by SDPA with a key padding mask,
    GELU (erf) MLP. No dropout (the GPT-2 workload covers dropout)."""

    def __init__(self, D, H):
        super().__init__()
        self.H = H
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.ln1 = nn.LayerNorm(D, eps=1e-12)
        self.fc1 = nn.Linear(D, 4 * D)
        self.fc2 = nn.Linear(4 * D, D)
        self.ln2 = nn.LayerNorm(D, eps=1e-12)

    def forward(self, x, mask):
        B, S, D = x.shape
        q, k, v = (t.view(B, S, self.H, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(B, S, D)))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class BertClassifier(nn.Module):
    """BERT-style sequence classifier: token + position embeddings, LayerNorm, two encoder
    layers, tanh pooler on the first token, classifier; cross entropy with label_smoothing=0.1.
    The batch has a padding mask (the last quarter of every other sequence is padding)."""

    B, S, D, H, VOCAB, LAYERS, C = 4, 64, 192, 4, 2000, 2, 4

    def __init__(self):
        super().__init__()
        D = self.D
        self.tok = nn.Embedding(self.VOCAB, D)
        self.pos = nn.Embedding(self.S, D)
        self.ln = nn.LayerNorm(D, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(D, self.H) for _ in range(self.LAYERS))
        self.pooler = nn.Linear(D, D)
        self.classifier = nn.Linear(D, self.C)

    def forward(self, ids, keep, labels):
        S = ids.shape[1]
        x = self.ln(self.tok(ids) + self.pos(torch.arange(S, device=ids.device)))
        mask = keep[:, None, None, :]  # (B, 1, 1, S): True = attend
        for layer in self.layers:
            x = layer(x, mask)
        logits = self.classifier(torch.tanh(self.pooler(x[:, 0])))
        return F.cross_entropy(logits, labels, label_smoothing=0.1)

    def make_batch(self, seed):
        g = _gen(seed)
        keep = torch.ones(self.B, self.S, dtype=torch.bool)
        keep[::2, self.S * 3 // 4:] = False
        return (torch.randint(0, self.VOCAB, (self.B, self.S), generator=g), keep,
                torch.randint(0, self.C, (self.B,), generator=g))


# ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    cls: type
    optimizer: str
    make_optimizer: Callable

    @property
    def about(self):
        return (self.cls.__doc__ or "").split("\n")[0].strip()

    def build(self, seed=0):
        """(model in train mode, make_batch), weights drawn from torch's default init under
        `seed` (the global RNG state is restored afterwards)."""
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = self.cls().train()
        finally:
            torch.random.set_rng_state(state)
        return model, model.make_batch


def _adamw(params):
    # eps=1e-6 as in BERT's recipe. With the default 1e-8, Adam's early steps amplify rounding
    # noise: the attention key bias has a zero gradient in exact arithmetic (softmax ignores a
    # shift shared by all keys), ~1e-10 of noise in practice, and g / (sqrt(v) + 1e-8) turns
    # that noise into steps of ~lr/100. Two correct implementations whose gradients differ by
    # float32 rounding (1e-7 of the largest) then differ by ~1e-2 in those parameters after 3
    # steps; with 1e-6, by ~1e-4, within run_training.py's 5e-4.
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, eps=1e-6)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


WORKLOADS = [
    Workload("gpt2_block", GPT2Block, "AdamW(lr=1e-3, wd=0.01, eps=1e-6)", _adamw),
    Workload("llama_layer", LlamaLayer, "AdamW(lr=1e-3, wd=0.01, eps=1e-6)", _adamw),
    Workload("mlp_classifier", MLPClassifier, "SGD(lr=0.01, momentum=0.9)", _sgd),
    Workload("resnet_block", ResNetBlock, "SGD(lr=0.01, momentum=0.9)", _sgd),
    Workload("bert_classifier", BertClassifier, "AdamW(lr=1e-3, wd=0.01, eps=1e-6)", _adamw),
]
BY_NAME = {w.name: w for w in WORKLOADS}
