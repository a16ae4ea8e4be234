"""Differential fuzzer: random PyTorch programs, run eagerly and through kiln, must agree.

    python -m kiln.fuzz [--seed S] [--count N | --seconds T] [--verbose] [--out DIR]
                        [--no-minify] [--max-failures K] [--report-known] [--in-process] [--train]
                        [--half bfloat16|float16] [--dynamic]

Program k of a run is generated from seed S + k alone, so `--seed S+k --count 1` replays it
(and minifies it). A program is Python source (statements in a `def f(x0, x1, ...)`) over
seeded random inputs: DAGs of the ops kiln lowers -- pointwise unary/binary ops with tensors and
Python scalars, comparisons and where, casts, clamp, activations, reductions (sum, mean,
amax/amin, argmax/argmin, var/std, prod, any/all, logsumexp, norms, softmax, log_softmax,
layer_norm, ...), views (permute, transpose, slices with steps, expand, reshape, flatten,
unsqueeze/squeeze, select), matmul (`@`, which kiln runs as a BLAS step, or a fallback node for integers), in-place ops on
intermediates and on arguments (kiln writes those back), and now and then a data-dependent
`.item()` / `if tensor:` branch (a graph break) -- over random shapes (broadcasts, size-1, odd,
large and empty sizes), dtypes (float32, float64, int32, int64, bool), layouts (contiguous,
transposed, sliced with an offset and steps, broadcast with stride 0, permuted), the same tensor
passed twice (in some calls only), and, sometimes, inf/nan/-0.0/1e30 or integer extremes.

Each program is run eagerly and through a fresh `kiln.compile` three times: the capturing call,
the cached call on the same inputs, and a call on fresh random inputs of the same shapes and
layouts (the compiled path on new data); every call gets its own copies of the inputs. A
failure is any of:
  mismatch   a result differs beyond dtype-aware tolerances (TOLERANCES; NaN equal to NaN,
             exact for integers and bools), or its dtype, shape or structure differs. A
             difference is excused only where eager itself is ill-conditioned, judged by
             referees that compute the same program another legitimate way: in float64, on
             contiguous inputs, on inputs moved by a few ulps, and with every rounding-dependent
             op's result moved by a few ulps (see `_excused`). Exact integer work gets no excuse;
  exception  eager raised and kiln did not, kiln raised and eager did not, or they raised
             different exception types;
  eager      a call ran wholly eagerly although eager reads no tensor data into Python (so
             there is no graph break), for any reason but an integer division by zero (which
             kiln redoes eagerly on purpose), or the cached / fresh call was not a cache hit;
  mutation   an argument differs after the call (kiln wrote it, or wrote it wrongly);
  crash      the process died (a signal): found by running the programs in a worker process,
             which the parent restarts after the crashing seed;
  gradient   (--train) a gradient differs, or an output requires grad on one side only.

--train checks the same programs as training steps (Program.train): every float input is a leaf
that requires grad (same sizes and strides; eager refuses in-place writes to it, and kiln must
raise the same exception type). After each of the three calls, the gradients of the float
inputs are computed on both sides with torch.autograd.grad from the float outputs that require
grad, for the same seeded random output gradients (`cotangents`), and compared as results are
(None on both sides is equal; a backward that raises must raise the same type on both sides).
Ill-conditioned float gradients are excused only where kiln is about as close to the float64
gradient as eager is, or within the moves of eager's gradient under rounding noise
(Note [Gradient referees] in kiln/_fuzz_training.py). The eager kind then also requires that
the cached and fresh calls run kiln's compiled backward (compiled_backward_calls grows) when the
program has no graph break and an output other than an argument itself requires grad; training
steps with graph breaks run eagerly on purpose for now.

--half checks the same programs with their float32 values (inputs and casts) as bfloat16 or
float16 (Program.half, as_half; `.float()` stays an upcast to float32). Half results are compared
within HALF_TOLERANCES (about two ulps); the referees move half values by about one ulp
(_noise_ulps) and judge "eager is ill-conditioned here" at the half type's precision
(half_tolerances); the float64 referee computes from the half inputs' exact values. Training
steps are not checked in half mode yet.

--dynamic calls each program over changing sizes (every input dim of one size, then others)
through one kiln.compile, so that dynamic programs are checked at sizes they were not captured
at (kiln/_fuzz_dynamic.py).

Failures matching KNOWN_ISSUES (known bugs and limitations, each pinned by an xfail test) are
counted apart; --report-known reports them too. Every other failure is shrunk by
`kiln.minify` and printed as a standalone reproducer (--out DIR also writes it to a file); a
training failure's reproducer checks gradients too (`repro_check(..., train=True)`).
"""

import argparse
import contextlib
import inspect
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float32, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)
DTYPE_SRC = {torch.float32: "torch.float32", torch.float64: "torch.float64", torch.int32: "torch.int32",
             torch.int64: "torch.int64", torch.bool: "torch.bool", torch.int8: "torch.int8",
             torch.int16: "torch.int16", torch.uint8: "torch.uint8", torch.float16: "torch.float16",
             torch.bfloat16: "torch.bfloat16"}
LAYOUTS = ("contiguous", "transposed", "sliced", "broadcast", "permuted")
FRESH = 1000  # seed offset of the fresh inputs of the third call

# (rtol, atol) per output dtype; integers and bools are exact. The half types (--half): about
# two ulps, since each half op rounds its float32 result once and one ulp of a transcendental's
# float32 result can round to the neighbouring half value.
HALF_TOLERANCES = {torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-7, 1e-9), **HALF_TOLERANCES}

# Eager calls kiln makes on purpose in a compiled program (not failures).
EXPECTED_EAGER_REASONS = ("integer division by zero",
                          # writing into an expanded argument: kiln runs it eagerly on purpose
                          "writes an expanded (stride-0) tensor",
                          # an in-place op reading another view of what it writes: eager's result
                          # depends on its iteration order, so kiln runs it eagerly on purpose
                          "reads another view of the tensor it writes",
                          # training: eager's own backward raises (an op without a derivative), so
                          # kiln runs the call eagerly and the error comes from the caller's backward
                          "autograd: the backward raises",
                          # training: prod's and cumprod's backward differ under tracing (NaN, inf)
                          "formula differs from eager's under tracing")

# Known issues: failures matching one of these (kind, text in the message -- for "eager", every
# reason must match) are counted as "known" rather than failed, so a fuzz run reports what is
# new. Each entry is pinned by an xfail(strict=True) regression test in tests/python/test_fuzz.py:
# when kiln is fixed that test XPASSes (and fails), and the entry must go.
KNOWN_ISSUES = [
    ("eager", "logsumexp of", "limitation: logsumexp of an integer or bool tensor is not lowered"),
    ("eager", "shares memory with another (views are not functionalized yet)",
     "limitation: in-place ops on a tensor that has views are not functionalized"),
]


def known_issue(failure):
    """The label of the KNOWN_ISSUES entry `failure` matches, or None."""
    if failure.kind == "eager":
        reasons = list(failure.reasons)
        for kind, text, label in KNOWN_ISSUES:
            if kind == "eager" and reasons and all(
                    any(t in r for k, t, _ in KNOWN_ISSUES if k == "eager") for r in reasons) \
                    and any(text in r for r in reasons):
                return label
        return None
    for kind, text, label in KNOWN_ISSUES:
        if kind == failure.kind and text in failure.message:
            return label
    return None


_DATA_OPS = ("_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "masked_select", "_unique2")


def reads_data(fn, inputs):
    """Whether eager `fn(*inputs)` reads tensor data into Python (an ATen op such as
    _local_scalar_dense: `.item()`, `bool(t)`, a 0-dim tensor used as a Python number, ...): a
    graph break kiln must key on. Found at the dispatcher, independently of kiln."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        hit = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in _DATA_OPS:
                Watch.hit = True
            return func(*args, **(kwargs or {}))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Watch():
                fn(*inputs)
    except Exception:  # noqa: BLE001 - the comparison reports it
        pass
    return Watch.hit


# ---- inputs (this function is copied verbatim into reproducers) ------------------------------
def make_input(shape, dtype, layout="contiguous", seed=0, specials=0.0):
    """A seeded random tensor of `shape` and `dtype` in a layout: contiguous; transposed (last
    two dims swapped in memory); sliced (storage offset, step 2 on dims 0 and -1); broadcast
    (dim 0 has stride 0); permuted (all dims reversed in memory). Floats are uniform in [-2, 2],
    ints in [-10, 10], bools fair; `specials` is the fraction of elements replaced by inf, -inf,
    nan, 0, -0.0, 1e30 (floats) or the dtype's extremes and 0 (ints)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    r = len(shape)
    if layout == "transposed" and r >= 2:
        base = shape[:-2] + (shape[-1], shape[-2])
    elif layout == "sliced" and r >= 1:
        base = (2 * shape[0] + 1,) + shape[1:-1] + ((2 * shape[-1],) if r > 1 else ())
    elif layout == "broadcast" and r >= 1:
        base = (1,) + shape[1:]
    elif layout == "permuted" and r >= 2:
        base = shape[::-1]
    else:
        layout, base = "contiguous", shape
    if dtype == torch.bool:
        t = torch.rand(base, generator=g) < 0.5
    elif dtype.is_floating_point:
        t = (torch.rand(base, generator=g, dtype=torch.float64) * 4 - 2).to(dtype)
        if specials > 0:
            pick = torch.rand(base, generator=g) < specials
            which = torch.randint(0, 6, base, generator=g)
            vals = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e30], dtype=dtype)
            t = torch.where(pick, vals[which], t)
    else:
        t = torch.randint(-10, 11, base, generator=g).to(dtype)
        if specials > 0:
            info = torch.iinfo(dtype)
            pick = torch.rand(base, generator=g) < specials
            which = torch.randint(0, 3, base, generator=g)
            vals = torch.tensor([info.max, info.min + 1, 0], dtype=dtype)
            t = torch.where(pick, vals[which], t)
    if layout == "transposed":
        t = t.transpose(-1, -2)
    elif layout == "sliced":
        t = t[1::2] if r == 1 else t[1::2, ..., ::2]
    elif layout == "broadcast":
        t = t.expand(shape)
    elif layout == "permuted":
        t = t.permute(*reversed(range(r)))
    return t


class InputSpec:
    """A seeded program input: `make_input(shape, dtype, layout, seed, specials)`; or, with
    `alias` (another input's name), that very tensor passed again -- in every call
    (alias_mode "both"), only in the first two calls ("first") or only in the fresh call
    ("fresh"); otherwise a tensor of its own."""

    def __init__(self, name, shape, dtype, layout="contiguous", seed=0, specials=0.0, alias=None,
                 alias_mode="both"):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self.layout, self.seed, self.specials = layout, seed, specials
        self.alias, self.alias_mode = alias, alias_mode

    def aliased(self, fresh):
        return self.alias is not None and (self.alias_mode == "both" or (self.alias_mode == "fresh") == fresh)

    def make(self, fresh=False):
        return make_input(self.shape, self.dtype, self.layout, self.seed + (FRESH if fresh else 0), self.specials)

    def replace(self, **kw):
        d = dict(name=self.name, shape=self.shape, dtype=self.dtype, layout=self.layout, seed=self.seed,
                 specials=self.specials, alias=self.alias, alias_mode=self.alias_mode)
        d.update(kw)
        return InputSpec(**d)

    def source(self, fresh_var="s"):
        own = (f"make_input({self.shape!r}, {DTYPE_SRC[self.dtype]}, {self.layout!r}, seed={self.seed} + {fresh_var}"
               f"{', specials=' + repr(self.specials) if self.specials else ''})")
        if self.alias is None:
            return own
        if self.alias_mode == "both":
            return self.alias
        return f"{self.alias} if {'' if self.alias_mode == 'fresh' else 'not '}{fresh_var} else {own}"

    def __repr__(self):
        al = f" alias of {self.alias} ({self.alias_mode})" if self.alias else ""
        return (f"InputSpec({self.name}: {tuple(self.shape)} {self.dtype} {self.layout} seed={self.seed} "
                f"specials={self.specials}{al})")


class TensorInput:
    """A user-given input tensor (kiln.minify on a plain function or source): shrunk by
    narrowing, written into reproducers as literal values when small."""

    def __init__(self, name, tensor):
        self.name, self.tensor = name, tensor

    @property
    def shape(self):
        return tuple(self.tensor.shape)

    @property
    def dtype(self):
        return self.tensor.dtype

    def make(self, fresh=False):
        return fresh_like(self.tensor, 4321) if fresh else self.tensor

    def __repr__(self):
        return f"TensorInput({self.name}: {self.shape} {self.dtype} strides={self.tensor.stride()})"


def fresh_like(t, seed):
    """A tensor with t's sizes, strides and storage offset, over a new storage of seeded random
    values (floats get t's non-finite values sprinkled in when it has some)."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type == "meta":
        return t
    span = t.storage_offset() + 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    specials = 0.1 if t.dtype.is_floating_point and t.numel() and not bool(t.isfinite().all()) else 0.0
    base = make_input((max(span, t.storage_offset()),), t.dtype, seed=seed, specials=specials)
    return base.as_strided(t.shape, t.stride(), t.storage_offset()).to(t.device)


# ---- training mode (these two functions are copied verbatim into training reproducers) ----------
def requiring_grad(inputs):
    """`inputs` with every float tensor made a leaf that requires grad, with its sizes, strides
    and storage (a detached alias); the same tensor passed twice stays one leaf."""
    leaves, out = {}, []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
            if id(t) not in leaves:
                leaves[id(t)] = t.detach().requires_grad_()
            out.append(leaves[id(t)])
        else:
            out.append(t)
    return out


def cotangents(outputs, fresh=False):
    """Seeded random output gradients, one per tensor of `outputs` (contiguous, its shape and
    dtype, uniform in [-2, 2]): eager's and kiln's backward get the same ones."""
    return [make_input(o.shape, o.dtype, seed=7000 + k + (1000 if fresh else 0)) for k, o in enumerate(outputs)]


# ---- programs -----------------------------------------------------------------------------
class Program:
    """A function as source: input names (the parameters), top-level statements (each one
    complete, possibly multi-line, at indent 0) and returned expressions."""

    def __init__(self, inputs, body, outputs, seed=None, has_break=False, name="f", preamble="", train=False,
                 half=None):
        self.inputs = list(inputs)
        self.body = list(body)
        self.outputs = list(outputs)
        self.seed = seed
        self.has_break = has_break
        self.name = name
        self.preamble = preamble  # extra module-level source the function needs (user source)
        self.train = train  # checked in training mode: float inputs require grad, gradients compared
        self.half = half  # the generated float32 values are this half type (checked at its precision)

    def copy(self, **kw):
        d = dict(inputs=self.inputs, body=self.body, outputs=self.outputs, seed=self.seed,
                 has_break=self.has_break, name=self.name, preamble=self.preamble, train=self.train,
                 half=self.half)
        d.update(kw)
        return Program(**d)

    def source(self, dtype_map=None):
        lines = [f"def {self.name}({', '.join(i.name for i in self.inputs)}):"]
        for st in self.body:
            lines += ["    " + ln for ln in st.splitlines()]
        if self.outputs:
            ret = self.outputs[0] if len(self.outputs) == 1 else ", ".join(self.outputs)
            lines.append(f"    return {ret}")
        elif not self.body:
            lines.append("    return None")
        src = "\n".join(lines) + "\n"
        for a, b in (dtype_map or {}).items():
            src = src.replace(DTYPE_SRC[a], DTYPE_SRC[b])
            if (a, b) == (torch.float32, torch.float64):
                src = src.replace(".float()", ".double()")
        return src

    def function(self, dtype_map=None):
        return compile_source(self.source(dtype_map), self.name, self.preamble)

    def make_inputs(self, fresh=False):
        made = {}
        for i in self.inputs:
            if getattr(i, "alias", None) is not None and i.aliased(fresh) and i.alias in made:
                made[i.name] = made[i.alias]
            else:
                made[i.name] = i.make(fresh)
        out = [made[i.name] for i in self.inputs]
        return requiring_grad(out) if self.train else out

    def __str__(self):
        ins = "\n".join(f"# {i!r}" for i in self.inputs)
        mode = "# training: float inputs require grad; gradients compared\n" if self.train else ""
        mode += f"# half mode: float32 values as {self.half}\n" if self.half else ""
        return f"{mode}{ins}\n{self.source()}"


_source_count = [0]


def compile_source(src, name="f", preamble=""):
    """Executes function source in a fresh namespace (torch, F, math) and returns `name`; the
    source is registered with linecache so tracebacks and kiln.explain show its lines."""
    import linecache
    _source_count[0] += 1
    filename = f"<kiln-fuzz-{_source_count[0]}>"
    text = (preamble + "\n" if preamble else "") + src
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    ns = {"torch": torch, "F": F, "math": math, "__name__": "kiln_fuzz_program"}
    exec(compile(text, filename, "exec"), ns)  # noqa: S102 - that is the point
    return ns[name]


# ---- the generator --------------------------------------------------------------------------
class _Val:
    __slots__ = ("name", "t", "inexact")

    def __init__(self, name, t, inexact):
        self.name, self.t, self.inexact = name, t, inexact

    @property
    def shape(self):
        return tuple(self.t.shape)

    @property
    def dtype(self):
        return self.t.dtype


_DIMS = (1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64)
_SPECIAL_FLOATS = ("float('inf')", "-float('inf')", "float('nan')", "-0.0", "0.0", "1e30")
_UNARY_METHODS = ("neg", "abs", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "reciprocal",
                  "sin", "cos", "tan", "tanh", "erf", "sigmoid", "floor", "ceil", "round", "trunc", "sign",
                  "relu", "isnan", "logical_not", "bitwise_not", "square")
_INEXACT_UNARY = {"exp", "exp2", "expm1", "log", "log2", "log1p", "rsqrt", "sin", "cos", "tan", "tanh", "erf",
                  "sigmoid"}
_ACTIVATIONS = ("F.gelu({a})", "F.gelu({a}, approximate='tanh')", "F.silu({a})", "F.mish({a})",
                "F.hardswish({a})", "F.hardsigmoid({a})", "F.softplus({a})", "F.softplus({a}, beta=2.0, threshold=1.5)",
                "F.leaky_relu({a}, 0.1)", "F.elu({a})", "F.elu({a}, alpha=0.5)", "F.relu6({a})",
                "F.hardtanh({a}, -0.5, 1.25)", "torch.sigmoid({a})", "F.logsigmoid({a})")
_BINOPS = ("+", "-", "*", "/", "//", "%", "**", "<", "<=", ">", ">=", "==", "!=", "&", "|", "^")
_BINFUNCS = ("torch.maximum", "torch.minimum", "torch.fmod", "torch.remainder", "torch.logical_and",
             "torch.logical_or", "torch.logical_xor", "torch.atan2", "torch.hypot")
# (no torch.copysign: it exposes the sign bit of NaNs, which eager leaves unspecified)
_DISCRETE_BIN = {"//", "%", "<", "<=", ">", ">=", "==", "!=", "torch.fmod", "torch.remainder"}


class Generator:
    """Builds one random program, validating every statement by running it eagerly on the
    example inputs (so shapes and dtypes are known and the program is valid eager code)."""

    def __init__(self, seed):
        self.seed = seed
        self.rng = random.Random(seed)
        self.vals = []
        self.inputs = []
        self.body = []
        self.env = {"torch": torch, "F": F, "math": math}
        self.has_break = False
        self.tmp = 0

    # -- helpers ------------------------------------------------------------------------------
    def choice(self, xs):
        return xs[self.rng.randrange(len(xs))]

    def pick(self, pred=None, recent=True):
        cands = [v for v in self.vals if pred is None or pred(v)]
        if not cands:
            return None
        if recent:
            w = [1 + i for i in range(len(cands))]
            return self.rng.choices(cands, weights=w)[0]
        return self.choice(cands)

    def scalar(self, dtype):
        r = self.rng.random()
        if dtype == torch.bool:
            return self.choice(("True", "False", "1", "0.5"))
        if dtype.is_floating_point:
            if r < 0.06:
                return self.choice(_SPECIAL_FLOATS)
            if r < 0.25:
                return self.choice(("2", "-1", "3", "0", "1"))
            return self.choice(("0.5", "-1.5", "2.0", "1e-3", "7.25", "-0.1", "1.0", "3.5"))
        if r < 0.15:
            return self.choice(("0.5", "-2.5", "1.5"))  # int tensor op float scalar: promotes
        return self.choice(("2", "-1", "3", "0", "1", "5", "-7", "100"))

    def random_shape(self):
        rank = self.rng.choices((0, 1, 2, 3, 4), weights=(6, 20, 38, 26, 10))[0]
        shape = [self.choice(_DIMS) for _ in range(rank)]
        r = self.rng.random()
        if rank and r < 0.04:
            shape[self.rng.randrange(rank)] = 0  # empty
        elif rank >= 2 and r < 0.08:
            shape[-1], shape[-2] = self.choice(((257, 300), (1, 70000), (129, 513), (64, 1025)))  # big: threads, f64 accum
            shape = shape[-2:]
        n = math.prod(shape)
        while n > 200000:
            k = shape.index(max(shape))
            shape[k] = max(1, shape[k] // 4)
            n = math.prod(shape)
        return tuple(shape)

    def add_input(self, shape, dtype=None):
        ins = [i for i in self.inputs if i.alias is None]
        if dtype is None and ins and self.rng.random() < 0.06:
            # the same tensor passed twice (in some calls only): aliasing must be guarded
            src = self.choice(ins)
            spec = src.replace(name=f"x{len(self.inputs)}", seed=src.seed + 101, alias=src.name,
                               alias_mode=self.choice(("both", "first", "fresh")))
            t = self.env[src.name] if spec.aliased(False) else spec.make()
            self.inputs.append(spec)
            self.env[spec.name] = t
            v = _Val(spec.name, t, False)
            self.vals.append(v)
            return v
        if dtype is None:
            dtype = self.rng.choices((torch.float32, torch.float64, torch.int32, torch.int64, torch.bool),
                                     weights=(50, 12, 12, 14, 8))[0]
        layout = self.rng.choices(LAYOUTS, weights=(60, 12, 12, 8, 8))[0]
        specials = self.choice((0.05, 0.2)) if self.rng.random() < 0.15 and dtype != torch.bool else 0.0
        spec = InputSpec(f"x{len(self.inputs)}", shape, dtype, layout, seed=self.seed * 7 + len(self.inputs),
                         specials=specials)
        t = spec.make()
        self.inputs.append(spec)
        self.env[spec.name] = t
        v = _Val(spec.name, t, False)
        self.vals.append(v)
        return v

    def try_stmt(self, expr, inexact, target=None, raw=None):
        """Runs `target = expr` (or the statement `raw`) eagerly; keeps it when it works and
        gives a tensor."""
        target = target or f"v{len(self.body)}"
        if raw is not None:
            env = dict(self.env)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    exec(raw, env)  # noqa: S102
            except Exception:  # noqa: BLE001
                return None
            self.body.append(raw)
            return "done"
        stmt = f"{target} = {expr}"
        env = dict(self.env)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(stmt, env)  # noqa: S102
        except Exception:  # noqa: BLE001 - invalid for these dtypes/shapes: try another
            return None
        t = env[target]
        if not isinstance(t, torch.Tensor) or t.numel() > 400000 or t.dtype not in DTYPE_SRC:
            return None
        self.env[target] = t
        self.body.append(stmt)
        v = _Val(target, t, inexact)
        self.vals.append(v)
        return v

    # -- op families: each returns (expr, inexact) or None ---------------------------------------
    def op_unary(self):
        a = self.pick()
        m = self.choice(_UNARY_METHODS)
        form = self.rng.random()
        expr = f"torch.{m}({a.name})" if form < 0.4 else f"{a.name}.{m}()"
        return expr, a.inexact or m in _INEXACT_UNARY

    def op_activation(self):
        a = self.pick(lambda v: v.dtype.is_floating_point) or self.pick()
        return self.choice(_ACTIVATIONS).format(a=a.name), True

    def operand(self, like, allow_scalar=True):
        """A second operand for `like`: a value of a broadcast-compatible shape, or a scalar."""
        if allow_scalar and self.rng.random() < 0.35:
            return self.scalar(like.dtype), False
        cands = [v for v in self.vals if _broadcastable(v.shape, like.shape)]
        if not cands:
            return self.scalar(like.dtype), False
        v = self.rng.choices(cands, weights=[1 + i for i in range(len(cands))])[0]
        return v.name, v.inexact

    def op_binary(self):
        a = self.pick()
        b, b_inexact = self.operand(a)
        inexact = a.inexact or b_inexact
        r = self.rng.random()
        if r < 0.55:
            op = self.choice(_BINOPS)
            if op == "**" and self.rng.random() < 0.6:
                b = self.choice(("2", "3", "0.5", "-1", "-2", "-0.5", "1.5", "0"))
            if self.rng.random() < 0.15 and not b.startswith("v") and not b.startswith("x"):
                return f"{b} {op} {a.name}", inexact or op in ("**", "/")  # scalar on the left (rsub, rdiv, rpow)
            return f"{a.name} {op} {b}", inexact or op == "**"
        if r < 0.85:
            fn = self.choice(_BINFUNCS)
            return f"{fn}({a.name}, {b})", inexact or fn in ("torch.atan2", "torch.hypot")
        mode = self.choice(("trunc", "floor"))
        if r < 0.92:
            return f"torch.div({a.name}, {b}, rounding_mode={mode!r})", inexact
        alpha = self.choice(("2", "-1", "0.5"))
        return f"torch.{self.choice(('add', 'sub'))}({a.name}, {b}, alpha={alpha})", inexact

    def op_where(self):
        a = self.pick()
        c = self.pick(lambda v: v.dtype == torch.bool and _broadcastable(v.shape, a.shape))
        if c is None or self.rng.random() < 0.5:
            x = self.pick(lambda v: _broadcastable(v.shape, a.shape)) or a
            cond = f"{x.name} {self.choice(('>', '<', '>=', '!='))} {self.scalar(x.dtype)}"
            cond_inexact = x.inexact
        else:
            cond, cond_inexact = c.name, c.inexact
        b, b_inexact = self.operand(a)
        if self.rng.random() < 0.5:
            return f"torch.where({cond}, {a.name}, {b})", a.inexact or b_inexact or cond_inexact
        return f"torch.where({cond}, {b}, {a.name})", a.inexact or b_inexact or cond_inexact

    def op_clamp(self):
        a = self.pick()
        r = self.rng.random()
        lo, hi = self.scalar(a.dtype), self.scalar(a.dtype)
        if r < 0.3:
            return f"{a.name}.clamp({lo}, {hi})", a.inexact
        if r < 0.5:
            return f"{a.name}.clamp(min={lo})", a.inexact
        if r < 0.65:
            return f"torch.clamp_max({a.name}, {hi})", a.inexact
        b = self.pick(lambda v: _broadcastable(v.shape, a.shape))
        if b is None:
            return None
        if r < 0.85:
            return f"torch.clamp({a.name}, min={b.name})", a.inexact or b.inexact
        return f"{a.name}.clamp({b.name}, {hi})", a.inexact or b.inexact

    def op_cast(self):
        a = self.pick()
        dt = self.choice((torch.float32, torch.float64, torch.int32, torch.int64, torch.bool))
        if a.dtype.is_floating_point and dt in INT_DTYPES:
            # float -> int of nan/inf/out-of-range is undefined in eager: keep it defined.
            return (f"torch.where({a.name}.isnan(), 0.0, {a.name}).clamp(-1000, 1000).to({DTYPE_SRC[dt]})",
                    a.inexact)
        form = self.rng.random()
        if form < 0.3:
            name = {torch.float32: "float", torch.float64: "double", torch.int32: "int", torch.int64: "long",
                    torch.bool: "bool"}[dt]
            return f"{a.name}.{name}()", a.inexact
        return f"{a.name}.to({DTYPE_SRC[dt]})", a.inexact

    def _dim(self, a, allow_none=False):
        if a.t.dim() == 0 or (allow_none and self.rng.random() < 0.2):
            return None
        d = self.rng.randrange(a.t.dim())
        return d - a.t.dim() if self.rng.random() < 0.3 else d

    def _dims(self, a):
        if a.t.dim() == 0 or self.rng.random() < 0.2:
            return None
        k = self.rng.randint(1, a.t.dim())
        ds = sorted(self.rng.sample(range(a.t.dim()), k))
        return ds[0] if k == 1 and self.rng.random() < 0.5 else tuple(ds)

    def op_reduce(self):
        a = self.pick()
        kind = self.choice(("sum", "sum", "mean", "amax", "amin", "argmax", "argmin", "var", "std", "prod", "any",
                            "all", "logsumexp", "max_dim", "min_dim", "sum_dtype", "norm", "cumsum", "cumprod"))
        keep = self.rng.random() < 0.3
        kd = ", keepdim=True" if keep else ""
        dims = self._dims(a)
        dims_s = "" if dims is None else repr(dims)
        if kind in ("sum", "mean", "amax", "amin", "prod", "any", "all"):
            if kind in ("prod", "any", "all") and isinstance(dims, tuple):
                dims_s = repr(dims[0])
            if not dims_s:
                return f"{a.name}.{kind}()", True
            return f"{a.name}.{kind}({dims_s}{kd})", kind in ("sum", "mean", "prod") or a.inexact
        if kind in ("cumsum", "cumprod"):  # scans (Note [Scans]): eager's sums, bit for bit
            d = self._dim(a)
            if d is None:
                return None
            return f"{a.name}.{kind}({d})", a.inexact
        if kind == "sum_dtype":
            return f"{a.name}.sum({dims_s or 'None'}, dtype=torch.float64)", True
        if kind in ("argmax", "argmin"):
            d = self._dim(a, allow_none=True)
            return (f"{a.name}.{kind}()" if d is None else f"{a.name}.{kind}({d}{kd})"), a.inexact
        if kind in ("var", "std"):
            corr = self.choice((0, 1, 1, 2))
            return f"{a.name}.{kind}({dims_s or 'None'}, correction={corr}{kd})", True
        if kind == "logsumexp":
            return f"torch.logsumexp({a.name}, {dims_s or '()'}{kd})", True
        if kind in ("max_dim", "min_dim"):
            d = self._dim(a)
            if d is None:
                return None
            part = self.choice(("values", "indices", "0", "1"))
            sel = f".{part}" if not part.isdigit() else f"[{part}]"
            return f"{a.name}.{kind[:3]}({d}{kd}){sel}", a.inexact
        ordv = self.choice(("2", "1", "float('inf')", "3"))
        return f"torch.linalg.vector_norm({a.name}, {ordv}, {dims_s or 'None'}{kd})", True

    def op_norm(self):
        a = self.pick(lambda v: v.dtype.is_floating_point and v.t.dim() >= 1)
        if a is None:
            return None
        kind = self.choice(("softmax", "softmax", "log_softmax", "layer_norm", "layer_norm", "rms"))
        d = self._dim(a)
        if kind == "softmax":
            return self.choice((f"torch.softmax({a.name}, {d})", f"{a.name}.softmax(dim={d})",
                                f"F.softmax({a.name}, {d})")), True
        if kind == "log_softmax":
            return self.choice((f"F.log_softmax({a.name}, dim={d})", f"{a.name}.log_softmax({d})")), True
        k = self.rng.randint(1, min(2, a.t.dim()))
        if kind == "rms":
            return f"{a.name} * torch.rsqrt({a.name}.pow(2).mean(-1, keepdim=True) + 1e-6)", True
        w = self.pick(lambda v: v.dtype == a.dtype and v.shape == a.shape[-k:] and v.name != a.name)
        extra = f", {w.name}" if w is not None and self.rng.random() < 0.7 else ""
        if extra and self.rng.random() < 0.5:
            extra += f", {w.name}"
        return f"F.layer_norm({a.name}, {a.name}.shape[-{k}:]{extra}, eps={self.choice(('1e-5', '1e-3', '0.1'))})", True

    def op_view(self):
        a = self.pick()
        n = a.t.dim()
        kind = self.choice(("permute", "transpose", "slice", "slice", "unsqueeze", "squeeze", "reshape", "flatten",
                            "expand", "expand", "select", "t", "contiguous_perm", "view_split"))
        if kind == "permute" and n >= 2:
            p = list(range(n))
            self.rng.shuffle(p)
            return f"{a.name}.permute({', '.join(map(str, p))})", a.inexact
        if kind == "transpose" and n >= 2:
            i, j = self.rng.sample(range(n), 2)
            return f"{a.name}.transpose({i}, {j - n})", a.inexact
        if kind == "t" and n <= 2:
            return f"{a.name}.t()" if n == 2 or self.rng.random() < 0.5 else f"{a.name}.T", a.inexact
        if kind == "slice" and n >= 1:
            parts = []
            for d in range(n):
                r = self.rng.random()
                if r < 0.5:
                    parts.append(":")
                elif r < 0.65:
                    parts.append(f"::{self.rng.randint(2, 3)}")
                elif r < 0.8:
                    parts.append(f"{self.rng.randint(1, 2)}:")
                elif r < 0.9:
                    parts.append(f"{self.rng.randint(0, 1)}:-1:{self.rng.randint(1, 3)}")
                else:
                    parts.append(f":{self.rng.randint(1, 3)}")
            return f"{a.name}[{', '.join(parts)}]", a.inexact
        if kind == "unsqueeze":
            return f"{a.name}.unsqueeze({self.rng.randint(-n - 1, n)})", a.inexact
        if kind == "squeeze" and n >= 1:
            ones = [d for d, s in enumerate(a.shape) if s == 1]
            if ones and self.rng.random() < 0.7:
                return f"{a.name}.squeeze({self.choice(ones)})", a.inexact
            return f"{a.name}.squeeze()", a.inexact
        if kind == "reshape":
            if n >= 2 and self.rng.random() < 0.5:
                return f"{a.name}.reshape({a.name}.shape[0], -1)", a.inexact
            return f"{a.name}.reshape(-1)", a.inexact
        if kind == "flatten" and n >= 2:
            s = self.rng.randrange(n - 1)
            return f"{a.name}.flatten({s}, {self.rng.randint(s + 1, n - 1)})", a.inexact
        if kind == "view_split" and n >= 1 and a.shape[-1] % 2 == 0 and a.shape[-1] > 0:
            return f"{a.name}.unflatten(-1, (2, -1))", a.inexact
        if kind == "expand":
            ones = [d for d, s in enumerate(a.shape) if s == 1]
            if ones and self.rng.random() < 0.6:
                sizes = ["-1"] * n
                for d in ones:
                    if self.rng.random() < 0.7:
                        sizes[d] = str(self.choice((2, 3, 5, 8)))
                return f"{a.name}.expand({', '.join(sizes)})", a.inexact
            return f"{a.name}.expand({self.choice((2, 3))}, *{a.name}.shape)", a.inexact
        if kind == "select" and n >= 1:
            d = self.rng.randrange(n)
            idx = self.choice(("0", "-1", "1"))
            return f"{a.name}.select({d}, {idx})" if self.rng.random() < 0.5 else \
                f"{a.name}[{', '.join([':'] * d + [idx])}]", a.inexact
        if kind == "contiguous_perm" and n >= 2:
            return f"{a.name}.transpose(0, -1).contiguous()", a.inexact
        return None

    def op_matmul(self):
        a = self.pick(lambda v: v.dtype.is_floating_point and v.t.dim() >= 1)
        if a is None:
            return None
        r = self.rng.random()
        if a.t.dim() >= 2 and r < 0.4:
            if a.t.numel() // max(a.shape[-1], 1) * a.shape[-2] > 400000:
                return None  # a [70000, 1] value times its transpose would be 19.6 GB
            return f"{a.name} @ {a.name}.transpose(-1, -2)", True
        b = self.pick(lambda v: v.dtype == a.dtype and v.t.dim() >= 1 and v.shape[-2 if v.t.dim() >= 2 else 0]
                      == a.shape[-1] and v.name != a.name)
        if b is None or r < 0.7:
            k = self.choice((1, 3, 5, 16))
            b = self.add_input((a.shape[-1], k) if self.rng.random() < 0.8 else (a.shape[-1],), a.dtype)
        return self.choice((f"{a.name} @ {b.name}", f"torch.matmul({a.name}, {b.name})")), True

    def op_window(self):
        """Pooling and upsampling of a float value with 1-3 trailing dims to pool over."""
        a = self.pick(lambda v: v.dtype.is_floating_point and v.t.dim() >= 3 and min(v.shape[-2:]) >= 1)
        if a is None:
            return None
        h, w = a.shape[-2:]
        k = self.choice((1, 2, 3))
        s = self.choice((1, 2, k))
        p = self.choice((0, 0, 1)) if k >= 2 else 0
        ceil = self.choice(("False", "True"))
        x = a.name if a.t.dim() in (3, 4) else f"{a.name}.flatten(0, -4)"
        nearest = self.choice(("'nearest'", "'nearest-exact'"))
        forms = [f"F.max_pool2d({x}, {k}, {s}, {p}, ceil_mode={ceil})",
                 f"F.max_pool2d({x}, {k}, {s}, {p}, ceil_mode={ceil}, return_indices=True)[1].to({x}.dtype)",
                 f"F.avg_pool2d({x}, {k}, {s}, {p}, ceil_mode={ceil}, count_include_pad={self.choice(('True', 'False'))})",
                 f"F.max_pool1d({x}.flatten(-2), {k}, {s}, {p})",
                 f"F.interpolate({x}, scale_factor={self.choice((2, 0.5, 1.5, 3))}, mode='nearest')",
                 f"F.interpolate({x}, size=({self.choice((1, 3, 2 * h + 1))}, {self.choice((2, w, 5))}), "
                 f"mode={nearest})"]
        if a.t.dim() == 4:
            ac = self.choice(("False", "True"))
            forms += [f"F.interpolate({x}, size=({self.choice((1, 4, 2 * h))}, {self.choice((3, w + 1))}), "
                      f"mode='bilinear', align_corners={ac})",
                      f"F.adaptive_avg_pool2d({x}, ({self.choice((1, h))}, {self.choice((1, w))}))"]
            # a convolution and an eval batch norm (Note [Folding batch norm]); weights and
            # statistics made inside the function, deterministic
            c, o, kk = a.shape[1], self.choice((1, 3, 8)), self.choice((1, 3))
            dt = f"dtype={x}.dtype"
            lin = lambda lo, hi, n: f"torch.linspace({lo}, {hi}, {n}, {dt})"  # noqa: E731
            bias = self.choice(("None", lin(-0.5, 0.5, o)))
            conv = f"F.conv2d({x}, {lin(-1, 1, o * c * kk * kk)}.view({o}, {c}, {kk}, {kk}), {bias}, padding={kk // 2})"
            forms.append(f"F.batch_norm({conv}, {lin(-0.3, 0.3, o)}, {lin(0.5, 2, o)}, {lin(-2, 2, o)}, "
                         f"{lin(-1, 1, o)}, False, 0.1, 1e-5)")
        # inexact: interpolation weights and some window sums round apart from eager's kernels
        return self.choice(forms), True

    def op_create(self):
        a = self.pick()
        return self.choice((f"torch.zeros_like({a.name})", f"torch.ones_like({a.name})",
                            f"torch.full_like({a.name}, {self.scalar(a.dtype)})",
                            f"{a.name}.new_zeros({a.name}.shape)", f"torch.zeros({a.name}.shape, dtype={DTYPE_SRC[a.dtype]})")), False

    def op_inplace(self):
        a = self.pick()
        b, b_inexact = self.operand(a)
        return self.choice((f"({a.name} * 1).add_({b})", f"{a.name}.clone().mul_({b})",
                            f"({a.name} + 0).clamp_({self.scalar(a.dtype)}, {self.scalar(a.dtype)})",
                            f"{a.name}.clone().relu_()", f"{a.name}.clone().sub_({b})",
                            f"{a.name}.clone().neg_()")), a.inexact or b_inexact

    def op_mutate(self):
        """An in-place op on an argument (or on a view of one): kiln writes it back."""
        a = self.pick(lambda v: v.name.startswith("x")) if self.rng.random() < 0.6 else self.pick()
        b, b_inexact = self.operand(a)
        r = self.rng.random()
        if r < 0.25 and a.t.dim() >= 1:
            idx = self.choice(("0", "-1", ":1", "1:", "::2"))
            return self.try_stmt(None, False, raw=f"{a.name}[{idx}] = {self.scalar(a.dtype)}") and "done"
        if r < 0.35 and a.t.dim() >= 1 and a.shape[0] >= 1:
            n = a.shape[0]
            idx = self.choice((f"torch.arange({n}).flip(0)", f"torch.arange({n})", f"(torch.arange({n}) + 1) % {n}"))
            return f"{a.name}.index_copy_(0, {idx}, {a.name} * 2)", a.inexact
        if r < 0.45 and a.t.dim() >= 1 and a.shape[0] >= 1 and a.dtype != torch.bool:
            # folding scatters with duplicate indices (every other row lands twice)
            n, half = a.shape[0], max(a.shape[0] // 2, 1)
            view = ", ".join(["-1"] + ["1"] * (a.t.dim() - 1))
            idx = f"(torch.arange({n}) % {half})"
            return self.choice((f"{a.name}.scatter_add_(0, {idx}.view({view}).expand_as({a.name}), {a.name} * 2)",
                                f"{a.name}.index_add_(0, {idx}, {a.name}, alpha=3)",
                                f"{a.name}.scatter_reduce_(0, {idx}.view({view}).expand_as({a.name}), {a.name}.flip(0), 'amax')")), \
                a.inexact
        return self.choice((f"{a.name}.add_({b})", f"{a.name}.mul_({b})", f"{a.name}.clamp_(min={self.scalar(a.dtype)})",
                            f"{a.name}.copy_({b})", f"{a.name}.zero_()", f"{a.name}.neg_()",
                            f"{a.name}.sub_({b}, alpha=2)")), a.inexact or b_inexact

    def op_break(self):
        """A data-dependent branch on `.item()` / bool(tensor): a graph break."""
        a = self.pick(lambda v: v.t.numel() > 0 and v.dtype != torch.bool) or self.pick(lambda v: v.t.numel() > 0)
        if a is None:
            return None
        red = self.choice(("sum", "amax", "mean")) if a.dtype.is_floating_point else "sum"
        x = self.pick()
        target = f"v{len(self.body)}"
        r = self.rng.random()
        if r < 0.3:
            expr = f"{x.name} * {a.name}.{red}().item()"
            v = self.try_stmt(expr, True)
            if v is not None:
                self.has_break = True
            return "done"
        if r < 0.4 and a.t.dim() >= 1:
            # a data-dependent shape (Note [Shape reads]) folded back to a fixed one
            m = f"({a.name} > 0)" if a.dtype != torch.bool else a.name
            expr = self.choice((f"{x.name} + {a.name}[{m}].{red}()", f"{x.name} * {m}.nonzero().shape[0]",
                                f"{x.name} - torch.masked_select({a.name}, {m}).{red}()"))
            v = self.try_stmt(expr, True)
            if v is not None:
                self.has_break = True
            return "done"
        cond = (f"{a.name}.{red}().item() > {self.scalar(torch.float32)}" if r < 0.7
                else f"({a.name} > 0).any()" if a.dtype != torch.bool else f"{a.name}.any()")
        e1, e2 = f"{x.name} + 1", f"{x.name} * 2" if x.dtype != torch.bool else f"~{x.name}"
        stmt = f"if {cond}:\n    {target} = {e1}\nelse:\n    {target} = {e2}"
        env = dict(self.env)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(stmt, env)  # noqa: S102
                exec(f"_a = {e1}\n_b = {e2}", env)  # noqa: S102 - both branches valid
        except Exception:  # noqa: BLE001
            return "done"
        if env["_a"].shape != env["_b"].shape or env["_a"].dtype != env["_b"].dtype:
            return "done"
        self.env[target] = env[target]
        self.body.append(stmt)
        self.vals.append(_Val(target, env[target], True))
        self.has_break = True
        return "done"

    FAMILIES = (("unary", 14), ("activation", 8), ("binary", 26), ("where", 6), ("clamp", 5), ("cast", 7),
                ("reduce", 12), ("norm", 6), ("view", 14), ("matmul", 4), ("create", 1), ("inplace", 3), ("window", 3),
                ("break", 1.2), ("mutate", 1.5))

    def generate(self):
        base = self.random_shape()
        for _ in range(self.rng.choices((1, 2, 3), weights=(40, 40, 20))[0]):
            shape = list(base)
            if shape and self.rng.random() < 0.4:
                shape = shape[self.rng.randint(0, len(shape)):]  # drop leading dims: broadcasts
            for d in range(len(shape)):
                if self.rng.random() < 0.15:
                    shape[d] = 1
            self.add_input(tuple(shape))
        names, weights = zip(*self.FAMILIES)
        n = self.rng.choices((1, 2, 3, 4, 6, 8, 12), weights=(8, 12, 14, 16, 18, 18, 14))[0]
        while len(self.body) < n:
            for _ in range(30):
                fam = self.rng.choices(names, weights=weights)[0]
                made = getattr(self, "op_" + fam)()
                if made == "done":
                    break
                if made is None:
                    continue
                if self.try_stmt(*made) is not None:
                    break
            else:
                break
        outs = [self.vals[-1].name]
        for v in self.rng.sample(self.vals, min(len(self.vals), self.rng.choice((0, 0, 1, 2)))):
            if v.name not in outs:
                outs.append(v.name)
        return Program(self.inputs, self.body, outs, seed=self.seed, has_break=self.has_break)


def _broadcastable(s, t):
    if len(s) > len(t):
        return False  # keep the result shape of the first operand
    for a, b in zip(reversed(s), reversed(t)):
        if a != b and a != 1:
            return False
    return True


def generate(seed, train=False, half=None):
    """The random program of `seed` (deterministic); `train` only marks it to be checked in
    training mode (the program is the same); `half` (torch.bfloat16 or torch.float16) makes
    its float32 values that type (as_half)."""
    if train and half:
        raise ValueError("kiln.fuzz: training steps are not checked in half mode yet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = Generator(seed).generate()
    program.train = train
    return as_half(program, half) if half else program


def as_half(program, half):
    """A generated `program` with its float32 values as `half`: float32 inputs and casts to
    float32 (a `.float()` stays an upcast to float32: mixed precision). The program is generated
    and validated in float32, so every seed's program is the same in every mode."""
    def to(src):
        return src.replace(DTYPE_SRC[torch.float32], DTYPE_SRC[half])
    inputs = [i.replace(dtype=half) if i.dtype == torch.float32 else i for i in program.inputs]
    return program.copy(inputs=inputs, body=[to(st) for st in program.body],
                        outputs=[to(o) for o in program.outputs], half=half)


@contextlib.contextmanager
def half_tolerances(half):
    """With `half` (a dtype, or None: no change), the referees judge "eager is ill-conditioned
    here" at that type's precision rather than float32's (_F32_TOL): a half program's values
    round at every op, so a result's sensitivity shows at that scale."""
    global _F32_TOL
    saved = _F32_TOL
    if half:
        _F32_TOL = HALF_TOLERANCES[half]
    try:
        yield
    finally:
        _F32_TOL = saved


# ---- running and comparing ------------------------------------------------------------------------
class Failure:
    """What went wrong with a program: kind (mismatch, exception, eager, mutation, crash, gradient), a
    message, and the program (with its minified form and reproducer once minified)."""

    def __init__(self, kind, message, program=None, reasons=None):
        self.kind, self.message, self.program = kind, message, program
        self.reasons = dict(reasons or {})  # eager: kiln's fallback reasons -> times
        self.reproducer = None
        self.minified = None
        self.known = None  # the KNOWN_ISSUES label it matches

    @property
    def signature(self):
        """What minimization keeps: the kind, plus for eager fallbacks and exceptions the
        reasons / exception types with sizes and numbers blanked out."""
        import re
        if self.kind == "eager":
            reasons = list(self.reasons)
            return (self.kind, frozenset(re.sub(r"\[[^\]]*\]|\d+", "#", r) for r in reasons))
        if self.kind == "exception":
            return (self.kind, tuple(re.findall(r"(eager|kiln) (raised \w+|returned)", self.message)))
        return (self.kind,)

    def __repr__(self):
        return f"Failure({self.kind}: {self.message.splitlines()[0] if self.message else ''})"


def _run(fn, inputs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ("ok", fn(*inputs))
    except Exception as e:  # noqa: BLE001 - compared with the other side's
        return ("raise", e)


def _leaves(x, out):
    if isinstance(x, (tuple, list)):
        out.append(("(", type(x).__name__, len(x)))
        for y in x:
            _leaves(y, out)
    else:
        out.append(x)
    return out


def _clone(x):
    return [t.clone() if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta" else t
            for t in x]


def _same_tensor_values(a, b):
    if a.dtype.is_floating_point:
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def compare(expected, got, refs=(), what="result", inexact=None, excused=None):
    """None when `got` matches `expected` (structure, dtype, shape exactly; values within
    TOLERANCES, NaN == NaN); else a message. refs: thunks computing the same result another
    legitimate way (float64; eager on other layouts), used to excuse differences where eager
    itself is ill-conditioned (see _excused; `excused(e, g, [(name, referee's value)], bad)`
    replaces that judge). inexact: per returned value, whether it may depend on rounding (the
    perturbation referee only judges those); None: all may."""
    le, lg = _leaves(expected, []), _leaves(got, [])
    if inexact is not None:  # per leaf: a tuple result has its "(" marker first
        inexact = inexact if len(inexact) == 1 and len(le) == 1 else [False] + list(inexact)
    if len(le) != len(lg):
        return f"{what}: structure differs: kiln {_describe(got)}, eager {_describe(expected)}"
    ref_leaves = None
    for i, (e, g) in enumerate(zip(le, lg)):
        if isinstance(e, tuple) or isinstance(g, tuple):
            if e != g:
                return f"{what}: structure differs: kiln {_describe(got)}, eager {_describe(expected)}"
            continue
        if not isinstance(e, torch.Tensor):
            if type(e) is not type(g) or (e != g and not (isinstance(e, float) and math.isnan(e) and math.isnan(g))):
                return f"{what} leaf {i}: kiln {g!r}, eager {e!r}"
            continue
        if not isinstance(g, torch.Tensor):
            return f"{what} leaf {i}: kiln gave {type(g).__name__}, eager a tensor"
        if g.dtype != e.dtype or tuple(g.shape) != tuple(e.shape) or g.device != e.device:
            return (f"{what} leaf {i}: kiln {g.dtype} {tuple(g.shape)} {g.device}, "
                    f"eager {e.dtype} {tuple(e.shape)} {e.device}")
        bad = _mismatch(e, g)
        if bad is None or not bool(bad.any()):
            continue
        if ref_leaves is None:
            ref_leaves = []
            for _, ref in refs:
                try:
                    r = ref()
                except Exception:  # noqa: BLE001 - no referee
                    r = None
                ref_leaves.append(_leaves(r, []) if r is not None else [])
        loose = inexact is None or len(inexact) != len(le) or inexact[i]
        named = [(name, rl[i]) for (name, _), rl in zip(refs, ref_leaves) if i < len(rl)
                 and isinstance(rl[i], torch.Tensor) and tuple(rl[i].shape) == tuple(e.shape)
                 and (loose or name != "perturbed")]
        rs = [r for _, r in named]
        if rs and (excused(e, g, named, bad) if excused is not None else _excused(e, g, rs, bad)):
            continue
        idx = bad.nonzero()[:5].tolist()
        ev = [e[tuple(j)].item() for j in idx]
        gv = [g[tuple(j)].item() for j in idx]
        n = int(bad.sum())
        msg = (f"{what} leaf {i} ({e.dtype} {tuple(e.shape)}): {n} of {e.numel()} elements differ; "
               f"at {idx}: kiln {gv}, eager {ev}")
        for name, r in named:
            msg += f", {name} {[r[tuple(j)].item() for j in idx]}"
        return msg
    return None


def _mismatch(e, g):
    """Boolean mask of elements out of tolerance."""
    if e.numel() == 0:
        return None
    if e.dtype.is_floating_point:
        rtol, atol = TOLERANCES.get(e.dtype, (1e-3, 1e-3))
        return ~torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    return g != e


_F32_TOL = TOLERANCES[torch.float32]


def _close(a, b, tol):
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return torch.isclose(a.double(), b.double(), rtol=tol[0], atol=tol[1], equal_nan=True)
    return a == b


def _excused(e, g, refs, bad):
    """Whether every bad element (kiln `g` differs from eager `e`) is explained by eager's own
    ill-conditioning, judged by referees `refs` (the same program computed another legitimate
    way, see _referees). At a bad element, with r a referee's value:
      * eager disagrees with a referee beyond float32 tolerance: the result depends on rounding,
        layout or the last bits of the inputs there (e.g. `var(...) > 0` of equal values, `tan`
        of a huge sum), so kiln may legitimately differ too;
      * eager agrees with the float64 referee only to float32 precision (the program computes in
        float32 somewhere, even if the output is float64): kiln must agree with eager or the
        referee to float32 tolerance;
      * the referees move the element (however little) and kiln's difference is within 4x the
        largest move they make anywhere in this output (a whole row that depends on rounding,
        such as a layer norm of a constant row, moves by varying amounts);
      * otherwise kiln must match eager (it does not here: not excused)."""
    eb, gb = e[bad], g[bad]
    ok = torch.zeros_like(eb, dtype=torch.bool)
    moved = torch.zeros_like(eb, dtype=torch.bool)
    spread = 0.0
    for r in refs:
        rb = r[bad]
        if r.dtype != e.dtype and not (r.dtype.is_floating_point and e.dtype.is_floating_point) \
                and r.dtype != torch.float64:
            continue
        unstable = ~_close(eb, rb, _F32_TOL)
        f32ish = ~_close(eb, rb, (1e-12, 1e-14)) & ~unstable  # float32 rounding somewhere upstream
        near = _close(gb, rb, _F32_TOL) | _close(gb, eb, _F32_TOL)
        ok |= unstable | (f32ish & near)
        if e.dtype.is_floating_point:
            d = (rb.double() - eb.double()).abs()
            d = torch.where(d.isfinite(), d, torch.zeros_like(d))
            moved |= d > 0
            spread = max(spread, float(d.max()) if d.numel() else 0.0)
    if e.dtype.is_floating_point and spread > 0:
        kd = (gb.double() - eb.double()).abs()
        ok |= moved & (kd <= 4 * spread)
    return bool(ok.all())


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"tensor {x.dtype} {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return type(x).__name__ + "(" + ", ".join(_describe(y) for y in x) + ")"
    return repr(x)


def _referees(fn, program, inputs):
    """Referees: the same program computed another legitimate way, as (name, thunk) where the
    thunk returns (result, the arguments after the call), or None when it cannot run: float64
    (see _float64_ref), eager on contiguous copies of the inputs, eager on inputs moved by a few
    ulps (see _perturbed), and eager with every rounding-dependent op's result moved by a few ulps,
    up in one run and down in the other (see _rounding_noise_mode). Each runs at most once."""
    def once(make_inputs, mode=None):
        memo = []

        def run():
            if not memo:
                ins = make_inputs()
                if mode is not None:
                    with mode():
                        kind, out = _run(fn, ins)
                else:
                    kind, out = _run(fn, ins)
                memo.append((out, ins) if kind == "ok" else None)
            return memo[0]
        return run
    refs = [("contiguous", once(lambda: [t.contiguous() if isinstance(t, torch.Tensor) else t
                                         for t in clone_inputs(inputs)])),
            ("perturbed", once(lambda: [_perturbed(t) for t in clone_inputs(inputs)])),
            *[("noisy", once(lambda: clone_inputs(inputs), lambda seed=seed, d=d: _RoundingNoise(seed, d)))
              for seed in (1, 2, 3) for d in (1.0, -1.0)]]
    r64 = _float64_ref(program, inputs)
    if r64 is not None:
        refs.insert(0, ("float64", r64))
    return refs


def _result_refs(refs):
    """(name, thunk of the result) from _referees."""
    return [(name, (lambda r=r: (r() or (None,))[0])) for name, r in refs]


def _argument_refs(refs, i):
    """(name, thunk of argument i after the call) from _referees."""
    def arg(r):
        got = r()
        return got[1][i] if got is not None and i < len(got[1]) else None
    return [(name, (lambda r=r: arg(r))) for name, r in refs]


def _noise_ulps(dtype, ulps):
    """How many ulps the referees move a `dtype` value by, for `ulps` at float32 or float64. A
    half value is a float32 result rounded once, so another implementation moves it by about
    one ulp: a quarter. (`ulps` half ulps would outgrow HALF_TOLERANCES, about two, and the
    referees would excuse any difference.)"""
    return ulps / 4 if dtype in HALF_TOLERANCES else ulps


def _perturbed(t):
    """t with every float element moved by a few ulps, independently (seeded): a result that
    changes beyond tolerance under this is ill-conditioned there."""
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or t.numel() == 0:
        return t
    g = torch.Generator().manual_seed(77)
    eps = _noise_ulps(t.dtype, 4) * torch.finfo(t.dtype).eps
    noise = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * 2 - 1
    return t + t.abs() * noise * eps


def _rounding_noise_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    class RoundingNoise(TorchDispatchMode):
        """Eager with every rounding-dependent op's float result moved by up to 4 ulps (seeded):
        another valid implementation of the same program. An element that changes beyond
        tolerance under this depends on rounding choices (`floor(exp(x))` at an integer,
        `tan` of a huge product), so kiln may legitimately differ there."""
        EXACT = {"add", "sub", "rsub", "mul", "div", "neg", "abs", "where", "clamp", "clamp_min", "clamp_max",
                 "maximum", "minimum", "_to_copy", "clone", "copy", "relu", "floor", "ceil", "round", "trunc", "sign",
                 "fill", "zeros_like", "ones_like", "full", "full_like", "empty", "empty_like", "empty_strided",
                 "scalar_tensor", "lift_fresh", "detach", "alias", "hardtanh", "amax", "amin", "max", "min",
                 "_local_scalar_dense", "new_zeros", "new_ones", "new_full", "zeros", "ones", "logical_not",
                 "remainder", "fmod", "floor_divide", "isnan", "eq", "ne", "lt", "le", "gt", "ge", "bitwise_and",
                 "bitwise_or", "bitwise_xor", "bitwise_not", "logical_and", "logical_or", "logical_xor", "argmax",
                 "argmin", "any", "all", "leaky_relu", "hardsigmoid", "hardswish", "relu6", "expand", "contiguous"}

        SUMS = {"sum", "mean", "mm", "bmm", "mv", "dot", "matmul", "addmm", "linalg_vector_norm", "logsumexp"}

        def __init__(self, seed, direction=1.0):
            super().__init__()
            self.gen = torch.Generator().manual_seed(seed)
            self.direction = direction

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            if name in self.EXACT or func._schema.is_mutable or \
                    any(r.alias_info is not None for r in func._schema.returns):
                return out
            scale = None
            try:
                if name in self.SUMS and isinstance(out, torch.Tensor) and out.dtype.is_floating_point:
                    # summation error grows with the terms, not the result: sum(|x|) (|A| @ |B|)
                    scale = func(*[a.abs() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
                elif name in ("var", "std") and isinstance(out, torch.Tensor) and len(args) >= 1:
                    # x - mean cancels (a constant row's var is 0 up to rounding): relative to |x|
                    dim = args[1] if len(args) > 1 else kwargs.get("dim")
                    keep = kwargs.get("keepdim", args[3] if len(args) > 3 and isinstance(args[3], bool) else False)
                    m = args[0].abs().mean(dim=dim, keepdim=keep) if dim is not None else args[0].abs().mean()
                    scale = m * m if name == "var" else m
                elif name == "native_layer_norm" and isinstance(out, (tuple, list)):
                    # x - mean cancels: the error is relative to |mean| / std
                    scale = out[1].abs() * out[2]
            except Exception:  # noqa: BLE001 - no better scale
                scale = None
            if isinstance(out, torch.Tensor):
                return self.noise(out, scale)
            if isinstance(out, (tuple, list)):
                return type(out)(self.noise(t, scale if i == 0 else None) if isinstance(t, torch.Tensor) else t
                                 for i, t in enumerate(out))
            return out

        def noise(self, t, scale=None):
            if not t.dtype.is_floating_point or t.numel() == 0 or t.layout != torch.strided:
                return t
            r = torch.rand(t.shape, generator=self.gen, dtype=torch.float64)
            u = (torch.where(r < 0.5, -1.0, 1.0) * (0.5 + r % 0.5) * self.direction).to(t.dtype)  # |u| in [0.5, 1)
            mag = t.abs()
            ulps = _noise_ulps(t.dtype, 4)
            if scale is not None:
                # a reduction: its rounding error grows with the number of terms
                mag = torch.maximum(mag, scale.to(t.dtype).expand_as(t) if scale.dim() <= t.dim() else mag)
                ulps = _noise_ulps(t.dtype, 16)
            out = t + mag * u * (ulps * torch.finfo(t.dtype).eps)
            # an infinity or NaN stays as it is (-inf moved by inf * u would become NaN, and
            # excuse whatever kiln gives there)
            out = torch.where(t.isfinite(), out, t)
            # an implementation may give either sign to a zero it computes
            return torch.where(out == 0, out * torch.where(u > 0, 1.0, -1.0).to(t.dtype), out)
    return RoundingNoise


def _RoundingNoise(seed, direction=1.0):  # noqa: N802 - a class, built lazily
    global _RoundingNoiseClass
    if _RoundingNoiseClass is None:
        _RoundingNoiseClass = _rounding_noise_mode()
    return _RoundingNoiseClass(seed, direction)


_RoundingNoiseClass = None


# Ops whose results depend on rounding choices an implementation may make differently
# (transcendental approximations, summation order): values computed through them are
# "inexact", and only those may be excused by the perturbation referee.
INEXACT_NAMES = {
    "exp", "exp2", "expm1", "log", "log2", "log1p", "rsqrt", "sin", "cos", "tan", "tanh", "erf", "sigmoid",
    "gelu", "silu", "mish", "softplus", "elu", "logsigmoid", "atan2", "hypot", "sum", "mean", "var", "std",
    "prod", "logsumexp", "softmax", "log_softmax", "layer_norm", "vector_norm", "norm", "matmul", "mm", "bmm",
    "pow", "square", "item"}


def inexact_outputs(program):
    """For each returned expression of `program`: whether it may depend on rounding (it reads
    an inexact op's result, see INEXACT_NAMES). None when unknown (treated as inexact)."""
    import ast
    if not isinstance(program, Program):
        return None
    inexact = set()

    def is_inexact(node):
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in inexact:
                return True
            if isinstance(n, ast.Attribute) and n.attr in INEXACT_NAMES:
                return True
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Pow, ast.MatMult)):
                return True
        return False
    try:
        for st in program.body:
            node = ast.parse(st)
            if is_inexact(node):
                inexact |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        return [is_inexact(ast.parse(o, mode="eval")) for o in program.outputs]
    except SyntaxError:
        return None


_NARROW_FLOATS = (torch.float32, *HALF_TOLERANCES)


def _float64_ref(program, inputs):
    """A thunk computing the program in float64 (float32 and the half types -> float64
    everywhere, from the inputs' exact values), or None."""
    if program is None or not isinstance(program, Program):
        return None

    def ref():
        fn64 = program.function({dt: torch.float64 for dt in _NARROW_FLOATS})
        conv = {}  # the same tensor passed twice stays one tensor
        ins = [conv.setdefault(id(t), t.double()) if isinstance(t, torch.Tensor) and t.dtype in _NARROW_FLOATS
               else t for t in clone_inputs(inputs)]
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            kind, out = _run(fn64, ins)
        finally:
            torch.set_default_dtype(old)
        return (out, ins) if kind == "ok" else None
    memo = []

    def once():
        if not memo:
            memo.append(ref())
        return memo[0]
    return once


def clone_inputs(inputs):
    """Copies of `inputs` with the same sizes, strides and storage offsets, each storage copied
    once so inputs that shared memory (the same tensor twice, views of one tensor) still do. A
    tensor that requires grad is copied as a leaf that does (the same tensor twice: one leaf)."""
    storages, leaves, out = {}, {}, []
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type == "meta":
            out.append(t)
            continue
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in storages:
            n = t.untyped_storage().nbytes() // t.element_size()
            flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, (n,), (1,))
            storages[key] = flat.clone()
        c = torch.as_strided(storages[key], t.shape, t.stride(), t.storage_offset())
        if t.requires_grad:
            if id(t) not in leaves:
                leaves[id(t)] = c.requires_grad_()
            c = leaves[id(t)]
        out.append(c)
    return out


class Call:
    """One call compared (compare_call): `failure` (None, or a Failure), eager's and kiln's
    outcomes (`ekind`/`kkind`: "ok" or "raise"; `eout`/`kout`), the inputs each side ran on
    (after the call), and the cache hits kiln's call made."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def compare_call(fn, cf, ins, program, names, what):
    """Runs `fn` eagerly and `cf` (its kiln.compile) on their own copies of `ins` and compares
    them: the same exception type when either raises, else results within tolerances (with
    the referees' excuses) and every argument after the call. `names`: the inputs' names for
    messages; `what`: which call this is."""
    import kiln
    e_ins, k_ins = clone_inputs(ins), clone_inputs(ins)
    ekind, eout = _run(fn, e_ins)
    h0 = kiln.counters()["cache_hits"]
    kkind, kout = _run(cf, k_ins)
    call = Call(failure=None, ekind=ekind, kkind=kkind, eout=eout, kout=kout, e_ins=e_ins, k_ins=k_ins,
                hits=kiln.counters()["cache_hits"] - h0)
    if ekind == "raise" or kkind == "raise":
        if ekind != kkind:
            if kkind == "raise":
                tb = "".join(traceback.format_exception(type(kout), kout, kout.__traceback__)[-6:])
                call.failure = Failure("exception", f"{what}: kiln raised {type(kout).__name__}: {kout}\n"
                                       f"eager returned {_describe(eout)}\n{tb}")
            else:
                call.failure = Failure("exception", f"{what}: eager raised {type(eout).__name__}: {eout}; "
                                       f"kiln returned {_describe(kout)}")
        elif type(eout) is not type(kout):
            call.failure = Failure("exception", f"{what}: eager raised {type(eout).__name__}: {eout}; "
                                   f"kiln raised {type(kout).__name__}: {kout}")
        return call
    refs = _referees(fn, program, ins)
    msg = compare(eout, kout, _result_refs(refs), what, inexact_outputs(program))
    if msg is not None:
        call.failure = Failure("mismatch", msg)
        return call
    for i, (name, e, k) in enumerate(zip(names, e_ins, k_ins)):
        if isinstance(e, torch.Tensor) and e.layout == torch.strided and e.device.type != "meta":
            msg = compare(e, k, _argument_refs(refs, i), f"{what}: argument {name} after the call")
            if msg is not None:
                call.failure = Failure("mutation", msg)
                return call
    return call


def check_function(fn, inputs, fresh_inputs=None, expect_compiled=True, program=None, train=False):
    """Runs fn eagerly and through a fresh kiln.compile(fn): the capturing call and the cached
    call on `inputs`, then a call on `fresh_inputs` (same shapes and layouts, new values). Each
    call gets its own copies of the inputs (clone_inputs), for eager and for kiln, so a program
    that writes to its arguments is compared on what it wrote too. Returns None, or a Failure.
    expect_compiled: the program has no graph break, so no call may run wholly eagerly (but for
    integer division by zero) and the cached call must hit.
    train: float inputs require grad (requiring_grad), and after each call the gradients of
    the float outputs that require grad, for the same seeded output gradients (cotangents), are
    compared too (kiln.fuzz._fuzz_training); with expect_compiled, the cached and fresh calls
    must run kiln's compiled backward."""
    import kiln
    if train:
        from ._fuzz_training import check_gradients
        inputs = requiring_grad(inputs)
        fresh_inputs = None if fresh_inputs is None else requiring_grad(fresh_inputs)
    cf = kiln.compile(fn)
    before = kiln.counters()
    calls = [("capturing call", list(inputs)), ("cached call", list(inputs))]
    if fresh_inputs is not None:
        calls.append(("call on fresh inputs", list(fresh_inputs)))
    names = [i.name for i in program.inputs] if isinstance(program, Program) else \
        [f"input {k}" for k in range(len(calls[0][1]))]
    hits, kinds, backward = [], [], []
    for what, ins in calls:
        c = compare_call(fn, cf, ins, program, names, what)
        hits.append(c.hits)
        kinds.append(c.ekind)
        if c.failure is not None:
            return c.failure
        if c.ekind == "raise":
            continue
        e_ins, k_ins, eout, kout = c.e_ins, c.k_ins, c.eout, c.kout
        if train:
            failure, needs, ran = check_gradients(fn, program, what, names, ins, e_ins, k_ins, eout, kout,
                                                  fresh=what == "call on fresh inputs")
            if failure is not None:
                return failure
            backward.append((what, needs, ran))
    expected = (kinds[0], None)
    after = kiln.counters()
    if expect_compiled and expected[0] == "ok":
        new = {r: n - before["reasons"].get(r, 0) for r, n in after["reasons"].items()
               if n != before["reasons"].get(r, 0)}
        allowed = sum(n for r, n in new.items() if any(x in r for x in EXPECTED_EAGER_REASONS))
        eager = after["eager_calls"] - before["eager_calls"]
        if eager > allowed:
            return Failure("eager", f"{eager} of {len(calls)} calls ran wholly eagerly (no graph break in the "
                           f"program): {new}", reasons=new)
        if not allowed and hits[1] != 1:
            return Failure("eager", f"the cached call was not a cache hit: counters {_delta(before, after)}, "
                           f"reasons {new}", reasons=new)
        # Inputs that alias in some calls and not in others: the fresh call may rightly miss
        # (aliasing is guarded) and compile again.
        alias_changes = isinstance(program, Program) and any(
            getattr(i, "alias", None) is not None and getattr(i, "alias_mode", "both") != "both"
            for i in program.inputs)
        if not allowed and not alias_changes and len(hits) > 2 and kinds[2] == "ok" and hits[2] != 1:
            return Failure("eager", f"the call on fresh inputs (same shapes and layouts) was not a cache hit: "
                           f"counters {_delta(before, after)}, reasons {new}", reasons=new)
        # (a call that captured again -- inputs that alias in some calls only -- runs eager's backward)
        for (what, needs, ran), hit in zip(backward[1:], hits[1:]):
            if not allowed and needs and hit and not ran:
                return Failure("eager", f"{what}: the gradients did not run kiln's compiled backward: counters "
                               f"{_delta(before, after)}, reasons {new}", reasons=new)
    return None


def _delta(a, b):
    return {k: b[k] - a[k] for k in ("captures", "cache_hits", "recompiles", "graph_breaks", "fallback_ops",
                                      "eager_calls", "compiled_forward_calls", "compiled_backward_calls")
            if b.get(k) != a.get(k)}


def check_program(program):
    """Checks one Program (see check_function; a half program at its type's precision, see
    half_tolerances); returns None or a Failure (program attached)."""
    try:
        fn = program.function()
    except Exception as e:  # noqa: BLE001
        return Failure("invalid", f"the program does not compile as Python: {e}", program)
    inputs = program.make_inputs()
    expect = not program.has_break and not reads_data(fn, clone_inputs(inputs))
    with half_tolerances(program.half):
        f = check_function(fn, inputs, program.make_inputs(fresh=True), expect_compiled=expect, program=program,
                           train=program.train)
    if f is not None:
        f.program = program
        f.known = known_issue(f)
    return f


def same_failure(failure):
    """The predicate the fuzzer minifies with: the program still fails the same way (the same
    Failure.signature: kind, and the eager reasons or exception types)."""
    sig = failure.signature if isinstance(failure, Failure) else (failure,)
    train = bool(getattr(getattr(failure, "program", None), "train", False))

    def pred(fn, inputs, program=None):
        if program is not None:
            f = check_program(program)
        else:
            f = check_function(fn, inputs, [fresh_like(t, 4321) for t in inputs], train=train)
        return f is not None and (f.signature == sig if len(sig) > 1 else f.kind == sig[0])
    pred.wants_program = True
    return pred


# ---- the reproducer's check (copied verbatim into reproducers) ---------------------------------
def repro_check(fn, make_inputs, expect_compiled=True, tolerances=None, train=False):
    """Runs fn eagerly and through kiln.compile: capturing call, cached call, and a call on fresh
    inputs, each on its own inputs from make_inputs (deterministic); raises AssertionError on any
    difference (results, arguments after the call, dtypes, shapes, exception types, or, with
    expect_compiled, a call that ran wholly eagerly). train: float inputs require grad
    (requiring_grad), and the gradients of the float results that require grad for the same
    output gradients (cotangents) must match too; with expect_compiled, the cached and fresh
    calls must run kiln's compiled backward."""
    import warnings
    import kiln
    tol = tolerances or {torch.float32: (1e-4, 1e-5), torch.float64: (1e-7, 1e-9),  # kiln.fuzz.TOLERANCES
                         torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}

    def run(f, ins):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return "ok", f(*ins)
        except Exception as e:  # noqa: BLE001
            return "raise", e

    def flat(x):
        return [y for z in x for y in flat(z)] if isinstance(x, (tuple, list)) else [x]

    def same(what, e, k):
        assert len(flat(e)) == len(flat(k)), f"{what}: eager gave {e}, kiln {k}"
        for i, (a, b) in enumerate(zip(flat(e), flat(k))):
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
                assert not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b, \
                    f"{what} {i}: eager {a!r}, kiln {b!r}"
                continue
            assert (a.dtype, a.shape) == (b.dtype, b.shape), \
                f"{what} {i}: eager {a.dtype} {tuple(a.shape)}, kiln {b.dtype} {tuple(b.shape)}"
            a, b = a.detach(), b.detach()
            rtol, atol = tol.get(a.dtype, (0.0, 0.0))
            ok = torch.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True) if a.dtype.is_floating_point else a == b
            if not bool(ok.all()):
                idx = (~ok).nonzero()[:5].tolist()
                raise AssertionError(f"{what} {i}: {int((~ok).sum())} of {a.numel()} elements differ; at "
                                     f"{idx}: eager {[a[tuple(j)].item() for j in idx]}, kiln "
                                     f"{[b[tuple(j)].item() for j in idx]}")

    def grads(out, ins, fresh):
        outs = [t for t in flat(out) if isinstance(t, torch.Tensor) and t.requires_grad and t.dtype.is_floating_point]
        wrt = [t for i, t in enumerate(ins) if isinstance(t, torch.Tensor) and t.requires_grad
               and all(t is not u for u in ins[:i])]
        if not outs or not wrt:
            return "none", None, False
        needs = any(all(t is not x for x in ins) for t in outs)  # an argument returned as is needs none
        try:
            return "ok", list(torch.autograd.grad(outs, wrt, cotangents(outs, fresh), allow_unused=True)), needs
        except Exception as e:  # noqa: BLE001
            return "raise", e, False

    cf = kiln.compile(fn)
    first = None
    for what, fresh in (("capturing call", False), ("cached call", False), ("call on fresh inputs", True)):
        e_ins, k_ins = make_inputs(fresh), make_inputs(fresh)
        if train:
            e_ins, k_ins = requiring_grad(e_ins), requiring_grad(k_ins)
        ek, e = run(fn, e_ins)
        h0 = kiln.counters()["cache_hits"]
        kk, k = run(cf, k_ins)
        hit = kiln.counters()["cache_hits"] > h0  # else it captured again: eager's backward
        first = first or ek
        if ek == "raise" or kk == "raise":
            assert ek == kk and type(e) is type(k), f"{what}: eager {ek} {e!r}, kiln {kk} {k!r}"
            continue
        same(f"{what}: output", e, k)
        same(f"{what}: argument after the call", [t for t in e_ins if isinstance(t, torch.Tensor)],
             [t for t in k_ins if isinstance(t, torch.Tensor)])
        if not train:
            continue
        for i, (a, b) in enumerate(zip(flat(e), flat(k))):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                assert a.requires_grad == b.requires_grad, \
                    f"{what}: output {i} requires grad: eager {a.requires_grad}, kiln {b.requires_grad}"
        egk, eg, _ = grads(e, e_ins, fresh)
        b0 = kiln.counters()["compiled_backward_calls"]
        kgk, kg, needs = grads(k, k_ins, fresh)
        ran = kiln.counters()["compiled_backward_calls"] - b0
        assert egk == kgk and (egk != "raise" or type(eg) is type(kg)), \
            f"{what}: backward: eager {egk} {eg!r}, kiln {kgk} {kg!r}"
        if egk == "ok":
            same(f"{what}: gradient of the input", eg, kg)
        if expect_compiled and first == "ok" and hit and needs:
            assert ran > 0, f"{what}: the gradients did not run kiln's compiled backward: {kiln.counters()['reasons']}"
    c = kiln.counters()
    if expect_compiled and first == "ok":
        # eager runs kiln makes on purpose (kiln.fuzz.EXPECTED_EAGER_REASONS)
        expected = ("integer division by zero", "writes an expanded (stride-0) tensor",
                    "reads another view of the tensor it writes", "autograd: the backward raises",
                    "formula differs from eager's under tracing")
        eager = c["eager_calls"] - sum(n for r, n in c["reasons"].items() if any(x in r for x in expected))
        assert eager <= 0, f"a call ran wholly eagerly: {c['reasons']}"


# Sources copied into reproducers, read once at import: the file may change on disk while a
# long run goes on (inspect.getsource would then return the wrong lines).
REPRO_SOURCES = {f.__name__: inspect.getsource(f) for f in (make_input, fresh_like, requiring_grad, cotangents,
                                                              repro_check)}


# ---- the fuzz loop ------------------------------------------------------------------------------
def fuzz(seed=0, count=None, seconds=None, verbose=False, minify=True, out_dir=None, progress=None,
         max_failures=None, log=print, train=False, half=None):
    """Runs programs seed, seed+1, ... until `count` programs or `seconds` have passed.
    Returns (programs run, [Failure]). progress: a file object that gets 'seed N' before each
    program (the parent of a worker process reads it to find a crashing seed). train: check
    the programs in training mode (Program.train: gradients too). half: check them with their
    float32 values as that type (Program.half)."""
    import kiln
    from .minify import minify as do_minify
    failures = []
    n = 0
    t0 = time.time()
    stats = {"breaks": 0, "fallback_ops": {}, "shrink_s": 0.0, "known": {}, "with_gradients": 0}
    if train:
        from ._fuzz_training import STATS as grad_stats
    while True:
        if count is not None and n >= count:
            break
        if seconds is not None and time.time() - t0 >= seconds:
            break
        if max_failures is not None and len(failures) >= max_failures:
            break
        s = seed + n
        if progress is not None:
            progress.write(f"seed {s}\n")
            progress.flush()
        program = generate(s, train, half)
        n += 1
        if verbose:
            log(f"--- seed {s}\n{program}")
        if program.has_break:
            stats["breaks"] += 1
        before = kiln.counters()["fallback_op_counts"]
        compared = grad_stats["gradient_calls"] if train else 0
        failure = check_program(program)
        if train and grad_stats["gradient_calls"] > compared:
            stats["with_gradients"] += 1
        for op, c in kiln.counters()["fallback_op_counts"].items():
            d = c - before.get(op, 0)
            if d:
                stats["fallback_ops"][op] = stats["fallback_ops"].get(op, 0) + d
        if failure is None:
            continue
        if failure.known:
            stats["known"][failure.known] = stats["known"].get(failure.known, 0) + 1
            if verbose:
                log(f"(seed {s}: known issue: {failure.known}: {failure.message})")
            continue
        failures.append(failure)
        log(f"\n=== FAILURE at seed {s} ({failure.kind}): {failure.message}\n{program}")
        if minify:
            t1 = time.time()
            try:
                res = do_minify(program, None, same_failure(failure), verbose=False,
                                message=f"kiln.fuzz seed {s}: {failure.kind}: {failure.message.splitlines()[0]}")
                failure.minified, failure.reproducer = res.program, res.source
                log(f"--- minified reproducer (seed {s}):\n{res.source}")
            except Exception as e:  # noqa: BLE001 - report the unminified program anyway
                log(f"(minify failed: {e!r})")
            stats["shrink_s"] += time.time() - t1
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"seed{s}_{failure.kind}.py"), "w") as fh:
                fh.write(failure.reproducer or f"# seed {s}: {failure.message}\n" + str(program))
        if progress is not None:
            progress.write(f"fail {s} {failure.kind}\n")
            progress.flush()
    fuzz.last_stats = stats
    return n, failures


def _crash_predicate(timeout=120):
    """For minifying a crash: the reproducer kills a fresh interpreter with a signal."""
    def pred(fn, inputs, program=None):
        from .minify import reproducer_source
        src = reproducer_source(program, "crash candidate")
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(src)
        try:
            p = subprocess.run([*python_command(), fh.name], capture_output=True, timeout=timeout,
                               env=_child_env())
            return p.returncode < 0
        except subprocess.TimeoutExpired:
            return False
        finally:
            os.unlink(fh.name)
    pred.wants_program = True
    pred.isolated = True
    return pred


def python_command():
    """This interpreter, with the flag that decides where kiln is imported from (-S: no site
    packages, so no editable-install finder, when the parent runs that way)."""
    return [sys.executable] + (["-S"] if sys.flags.no_site else [])


def _child_env():
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


HANG_S = 600  # a worker whose progress file is this old is hung (minifying one failure takes < 200s)


def _supervise(args):
    """Runs the fuzz loop in worker processes so a crash (a signal) is reported with its seed
    and the run goes on from the next seed."""
    t0 = time.time()
    seed, done, failures, crashes = args.seed, 0, [], []
    while True:
        left_count = None if args.count is None else args.count - done
        left_s = None if args.seconds is None else args.seconds - (time.time() - t0)
        if (left_count is not None and left_count <= 0) or (left_s is not None and left_s <= 0):
            break
        with tempfile.NamedTemporaryFile("w+", suffix=".progress", delete=False) as prog:
            path = prog.name
        cmd = [*python_command(), "-m", "kiln.fuzz", "--worker", path, "--seed", str(seed)]
        if left_count is not None:
            cmd += ["--count", str(left_count)]
        if left_s is not None:
            cmd += ["--seconds", str(left_s)]
        for flag in ("verbose", "no_minify", "report_known", "train"):
            if getattr(args, flag):
                cmd.append("--" + flag.replace("_", "-"))
        if args.out:
            cmd += ["--out", args.out]
        if args.half:
            cmd += ["--half", args.half]
        if args.max_failures is not None:
            cmd += ["--max-failures", str(args.max_failures - len(failures) - len(crashes))]
        p = subprocess.Popen(cmd, env=_child_env())
        hung = False
        while p.poll() is None:
            time.sleep(1)
            if time.time() - os.path.getmtime(path) > HANG_S:  # no progress: a hang
                hung = True
                p.kill()
                p.wait()
        with open(path) as fh:
            lines = fh.read().splitlines()
        os.unlink(path)
        seeds = [int(ln.split()[1]) for ln in lines if ln.startswith("seed ")]
        failures += [ln for ln in lines if ln.startswith("fail ")]
        summary = [json.loads(ln[5:]) for ln in lines if ln.startswith("done ")]
        if summary:
            done += summary[0]["programs"]
            break
        if not seeds:
            print(f"kiln.fuzz: the worker exited with {p.returncode} before running a program", file=sys.stderr)
            return 2
        bad = seeds[-1]
        done += len(seeds)
        crashes.append(bad)
        what = f"made no progress for {HANG_S}s (a hang)" if hung else f"died (exit status {p.returncode})"
        print(f"\n=== CRASH at seed {bad}: the process {what}")
        program = generate(bad, args.train, _half(args))
        print(program)
        if not args.no_minify and not hung:
            from .minify import minify as do_minify
            try:
                res = do_minify(program, None, _crash_predicate(), max_evals=40, time_limit=300,
                                message=f"kiln.fuzz seed {bad}: crash (signal {-p.returncode})")
                print(f"--- minified reproducer (seed {bad}):\n{res.source}")
                if args.out:
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, f"seed{bad}_crash.py"), "w") as fh:
                        fh.write(res.source)
            except Exception as e:  # noqa: BLE001
                print(f"(minify failed: {e!r})")
        seed = bad + 1
        if args.max_failures is not None and len(failures) + len(crashes) >= args.max_failures:
            break
    total = len(failures) + len(crashes)
    print(f"\nkiln.fuzz: {done} programs from seed {args.seed} in {time.time() - t0:.1f}s; "
          f"{total} failures ({len(crashes)} crashes)")
    return 1 if total else 0


def _half(args):
    return getattr(torch, args.half) if args.half else None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kiln.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="first program seed (program k uses seed+k)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--count", type=int, default=None, help="number of programs (default 100)")
    g.add_argument("--seconds", type=float, default=None, help="run for this long instead")
    ap.add_argument("--verbose", action="store_true", help="print every program")
    ap.add_argument("--no-minify", action="store_true", help="do not shrink failing programs")
    ap.add_argument("--out", default=None, help="write each failure's reproducer into this folder")
    ap.add_argument("--max-failures", type=int, default=None, help="stop after this many failures")
    ap.add_argument("--report-known", action="store_true",
                    help="report failures matching KNOWN_ISSUES too (to check which are fixed)")
    ap.add_argument("--train", action="store_true",
                    help="training mode: float inputs require grad, and the gradients of the float results "
                         "(for the same seeded output gradients) are compared too")
    ap.add_argument("--half", choices=("bfloat16", "float16"), default=None,
                    help="the programs' float32 values (inputs and casts) as this half type")
    ap.add_argument("--dynamic", action="store_true",
                    help="call each program over changing sizes through one kiln.compile (dynamic programs; "
                         "in process, no minifying: kiln/_fuzz_dynamic.py)")
    ap.add_argument("--in-process", action="store_true",
                    help="no worker process (faster start; a crash then ends the run)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train and args.half:
        ap.error("--half does not check training steps yet: leave out --train")
    if args.report_known:
        KNOWN_ISSUES.clear()
    if args.count is None and args.seconds is None:
        args.count = 100
    if args.dynamic:
        from . import _fuzz_dynamic
        t0 = time.time()
        failures, dynamic = _fuzz_dynamic.run(args.seed, args.count or 100, verbose=True, half=_half(args),
                                              train=args.train)
        print(f"\nkiln.fuzz --dynamic: {args.count} programs from seed {args.seed} in {time.time() - t0:.1f}s; "
              f"{dynamic} became dynamic programs; {len(failures)} failures")
        return 1 if failures else 0
    if args.worker is None and not args.in_process:
        return _supervise(args)
    progress = open(args.worker, "a") if args.worker else None  # noqa: SIM115
    t0 = time.time()
    n, failures = fuzz(args.seed, args.count, args.seconds, args.verbose, not args.no_minify, args.out, progress,
                       args.max_failures, train=args.train, half=_half(args))
    stats = getattr(fuzz, "last_stats", {})
    if args.verbose or args.worker is None:
        print(f"{'programs with gradients compared: ' + str(stats.get('with_gradients')) + '; ' if args.train else ''}"
              f"fallback ops met: {stats.get('fallback_ops')}; programs with a graph break: {stats.get('breaks')}; "
              f"known issues met: {stats.get('known')}")
    if progress is not None:
        progress.write("done " + json.dumps({"programs": n, "failures": len(failures)}) + "\n")
        progress.close()
        print(f"kiln.fuzz worker: {n} programs (seeds {args.seed}..{args.seed + n - 1}) in {time.time() - t0:.1f}s, "
              f"{len(failures)} failures; "
              f"{str(stats.get('with_gradients')) + ' with gradients compared; ' if args.train else ''}"
              f"fallback ops {stats.get('fallback_ops')}; "
              f"{stats.get('breaks')} with graph breaks; known issues met {stats.get('known')}; "
              f"{stats.get('shrink_s', 0):.0f}s minifying")
        return 1 if failures else 0
    print(f"\nkiln.fuzz: {n} programs from seed {args.seed} in {time.time() - t0:.1f}s; {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    # Run the real module (kiln.fuzz), not this __main__ copy, so its classes are the ones
    # kiln.minify sees.
    from kiln.fuzz import main as _main
    sys.exit(_main())
