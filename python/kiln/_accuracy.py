"""KILN_CHECK=1: every compiled call is compared with eager, and a divergence is reported with
the graph, the kernel that wrote the diverging output, and a standalone reproducer."""

import copy
import dataclasses
import inspect

import torch

from ._flatten import flatten


class AccuracyError(AssertionError):
    """A compiled call gave a different result from eager (KILN_CHECK=1)."""


def _clone(obj, tensor=lambda t: t.detach().clone()):
    """A copy of the arguments for the eager reference: tensors cloned, and every container the
    function could change (Note [Argument containers]) copied, so that neither run sees the
    other's changes."""
    if isinstance(obj, torch.Tensor):
        return tensor(obj)
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
        return type(obj)(*(_clone(x, tensor) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(x, tensor) for x in obj)
    if isinstance(obj, dict):
        return {k: _clone(v, tensor) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = copy.copy(obj)
        for name, value in (vars(obj).items() if hasattr(obj, "__dict__") else
                            ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))):
            object.__setattr__(out, name, _clone(value, tensor))
        return out
    return obj


def _tolerance(dtype):
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-2, 1e-2
    if dtype == torch.float32:
        return 1e-4, 1e-5
    if dtype == torch.float64:
        return 1e-7, 1e-9
    return 0.0, 0.0


def _first_difference(got, want):
    """(output index, description) of the first output that differs, or None."""
    g, w = [], []
    if flatten(got, g) != flatten(want, w) or len(g) != len(w):
        return 0, "the result's structure differs from eager's"
    for i, (a, b) in enumerate(zip(g, w)):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.dtype != b.dtype or a.shape != b.shape:
                return i, f"output {i}: {a.dtype}{list(a.shape)} vs eager {b.dtype}{list(b.shape)}"
            rtol, atol = _tolerance(a.dtype)
            if a.is_floating_point():
                ok = torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
            else:
                ok = a == b
            if not bool(ok.all()):
                bad = (~ok).nonzero()[0].tolist()
                diff = (a.double() - b.double()).abs().nan_to_num(float("inf")).max().item()
                return i, (f"output {i}: {int((~ok).sum())} of {a.numel()} elements differ; first at "
                           f"{bad}: kiln {a[tuple(bad)].item()!r} vs eager {b[tuple(bad)].item()!r}; max |diff| {diff:.3g}")
        elif a != b and not (a != a and b != b):
            return i, f"output {i}: kiln {a!r} vs eager {b!r}"
    return None


def reproducer(fn, args, kwargs):
    """A standalone script that reruns fn on inputs of the same shapes, dtypes and strides."""
    try:
        src = inspect.getsource(getattr(fn, "__func__", fn))
    except (OSError, TypeError):
        src = f"# source of {getattr(fn, '__qualname__', fn)!r} is not available\n"
    lines = ["import torch", "import kiln", "", src.rstrip(), "", "torch.manual_seed(0)"]
    names = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            lines.append(f"a{i} = torch.empty_strided({list(a.shape)}, {list(a.stride())}, dtype={a.dtype})"
                         f".copy_(torch.randn({list(a.shape)}) * 3)")
        else:
            lines.append(f"a{i} = {a!r}")
        names.append(f"a{i}")
    name = getattr(fn, "__name__", "fn")
    lines += [f"args = ({', '.join(names)}{',' if len(names) == 1 else ''})",
              f"want = {name}(*args)",
              f"got = kiln.compile({name})(*args); got = kiln.compile({name})(*args)",
              "torch.testing.assert_close(got, want, equal_nan=True)"]
    return "\n".join(lines) + "\n"


def _clone_keeping_grad(obj):
    """_clone, but a tensor that requires grad stays one (a leaf of the reference's autograd)."""
    def tensor(t):
        c = t.detach().clone()
        return c.requires_grad_() if t.requires_grad else c
    return _clone(obj, tensor)


def _training_reference(compiled, args, kwargs):
    """For a call that needs gradients: runs eager first, on clones of the arguments that keep
    requires_grad, with the RNG and the module's buffers restored afterwards so the compiled call
    sees what eager saw. Hands the reference to the compiled training step (GradientCheck), whose
    backward compares its gradients with eager's for the same output gradients."""
    from . import _autograd
    ref_args, ref_kwargs = _clone_keeping_grad(args), _clone_keeping_grad(kwargs)
    module = compiled._module
    buffers = [(b, b.detach().clone()) for b in module.buffers()] if module is not None else []
    rng = torch.random.get_rng_state()
    want = compiled._fn(*ref_args, **ref_kwargs)
    torch.random.set_rng_state(rng)
    for b, v in buffers:
        b.data.copy_(v)  # no version bump: the reference's autograd graph may have saved b
    want_leaves, ref_leaves = [], []
    flatten(want, want_leaves)
    flatten((ref_args, ref_kwargs), ref_leaves)
    _autograd.GradientCheck.pending = _autograd.GradientCheck(compiled, want_leaves, ref_leaves, args, kwargs)
    return want


def checked_call(compiled, args, kwargs):
    compiled._last_entry = None
    if torch.is_grad_enabled():
        want = _training_reference(compiled, args, kwargs)
        try:
            got = compiled._call(*args, **kwargs)
        finally:
            from . import _autograd
            _autograd.GradientCheck.pending = None
    else:
        ref_args, ref_kwargs = _clone(args), _clone(kwargs)
        got = compiled._call(*args, **kwargs)
        want = compiled._fn(*ref_args, **ref_kwargs)
    diff = _first_difference(got, want)
    if diff is None:
        return got
    index, what = diff
    entry = compiled._last_entry
    where = "the call ran eagerly or through graph-break segments"
    graph = ""
    if entry is not None and entry.program is not None:
        kernel = "?"
        spec = entry.out_specs[index] if entry.out_specs and index < len(entry.out_specs) else None
        if spec is not None and spec[0] == "graph":
            kernel = entry.program.output_kernel(spec[1])
        where = f"first diverging kernel: {kernel}"
        graph = "\ngraph:\n" + entry.program.graph
    raise AccuracyError(
        f"kiln: {getattr(compiled, '__name__', 'fn')} diverges from eager (KILN_CHECK=1): {what}\n{where}{graph}\n"
        f"reproducer (also: kiln.minify on the function and inputs):\n{reproducer(compiled._fn, args, kwargs)}")
