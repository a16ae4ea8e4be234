"""The fuzzer's training mode (`python -m kiln.fuzz --train`): for each call of a program, the
gradients of its float inputs (leaves that require grad, see kiln.fuzz.requiring_grad), eager's
against kiln's, for the same seeded output gradients (kiln.fuzz.cotangents).

Note [Gradient referees]
A float32 gradient may differ from eager's where the backward is ill-conditioned: a sum of large
terms of opposite signs, a gradient through `1 / x` near 0, a reduction whose rounding moves a
value across a kink. Referees compute the same gradients another legitimate way -- the program
in float64, and eager with every rounding-dependent op's result (forward and backward) moved by
a few ulps -- and a bad element is excused only when kiln is about as close to a referee as
eager is there, or within a few times the rounding-noise moves of eager's gradient at that very
element (`_gradient_excused`). That is stricter than the results' `_excused`, which lets kiln
differ by up to 4x the largest referee move among all the differing elements of an output: one
ill-conditioned element of a gradient (a column through `tan` of a large sum) would then excuse
a doubled gradient everywhere else. Referees' infinities and NaNs excuse nothing (float64
overflows elsewhere than float32). Under any dispatch mode -- kiln's tracer, the noise referee --
some autograd formulas take their tensor-subclass form (prod's backward: no data-dependent zero
check, other values than eager's where a row holds NaN or inf), so the noise moves are measured
from a noise-free run under a mode, and a formula difference never counts as a move.
"""

import contextlib

import torch

from . import fuzz as fz

# calls whose gradients were compared, and of those the ones that ran kiln's compiled backward
STATS = {"gradient_calls": 0, "compiled_backward_calls": 0}


def differentiable(out):
    """The tensors of a result (any nesting) that get gradients: floats that require grad."""
    return [t for t in fz._leaves(out, []) if isinstance(t, torch.Tensor) and t.requires_grad
            and t.dtype.is_floating_point]


def grad_inputs(inputs):
    """Indices of the distinct tensors of `inputs` that require grad (the first of a tensor
    passed twice)."""
    seen, out = set(), []
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            out.append(i)
    return out


def gradients(out, inputs, wrt, fresh, cots=None):
    """("ok", [gradient or None per index in wrt]) of the differentiable tensors of `out` for
    their cotangents (seeded, or `cots` converted to their dtypes), ("raise", exception), or
    ("none", None) when nothing is differentiable."""
    outs = differentiable(out)
    if not outs or not wrt:
        return "none", None
    if cots is None:
        cots = fz.cotangents(outs, fresh)
    elif len(cots) != len(outs) or any(c.shape != o.shape for c, o in zip(cots, outs)):
        return "raise", RuntimeError("the referee's differentiable outputs are not eager's")
    else:
        cots = [c.to(o.dtype) for c, o in zip(cots, outs)]
    try:
        return "ok", list(torch.autograd.grad(outs, [inputs[i] for i in wrt], cots, allow_unused=True))
    except Exception as e:  # noqa: BLE001 - compared with the other side's
        return "raise", e


def _referees(fn, program, ins, wrt, fresh, cots):
    """(name, thunk -> [gradient or None per wrt input] or None): the program in float64,
    eager under a dispatch mode that changes nothing ("moded"), and eager under kiln.fuzz's
    rounding-noise mode (both directions, three seeds). Each runs once."""
    def once(run):
        memo = []

        def get():
            if not memo:
                try:
                    memo.append(run())
                except Exception:  # noqa: BLE001 - no referee
                    memo.append(None)
            return memo[0]
        return get

    def eager(f, make, mode=None):
        inputs = make()
        with torch.enable_grad(), mode() if mode is not None else contextlib.nullcontext():
            kind, out = fz._run(f, inputs)
            if kind != "ok":
                return None
            kind, g = gradients(out, inputs, wrt, fresh, cots)
        return g if kind == "ok" else None

    def run64():
        if not isinstance(program, fz.Program):
            return None
        fn64 = program.function({torch.float32: torch.float64})
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return eager(fn64, lambda: _float64_inputs(ins))
        finally:
            torch.set_default_dtype(old)
    refs = [("float64", once(run64)),
            ("moded", once(lambda: eager(fn, lambda: fz.clone_inputs(ins), _passthrough_mode)))]
    for seed in (1, 2, 3):
        for d in (1.0, -1.0):
            refs.append(("noisy", once(lambda seed=seed, d=d: eager(
                fn, lambda: fz.clone_inputs(ins), lambda: fz._RoundingNoise(seed, d)))))
    return refs


def _passthrough_mode():
    """A TorchDispatchMode that runs every op as it is. Under any dispatch mode, some of
    autograd's formulas take their tensor-subclass form (isTensorSubclassLike: prod's backward
    without its data-dependent zero check, which differs from eager's where a row holds NaN or
    inf), so the noise referees' moves are measured from this run, not from eager's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))
    return Passthrough()


def _float64_inputs(ins):
    """Copies of `ins` with float32 tensors as float64 leaves (requires_grad kept; the same
    tensor twice stays one tensor)."""
    conv, out = {}, []
    for t in fz.clone_inputs(ins):
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
            if id(t) not in conv:
                conv[id(t)] = t.detach().double().requires_grad_(t.requires_grad)
            out.append(conv[id(t)])
        else:
            out.append(t)
    return out


def _distance(x, r):
    """|x - r| elementwise in float64 where both are finite; 0 where they are equal (infinities
    of one sign, NaN and NaN); inf where they differ otherwise."""
    x, r = x.double(), r.double()
    d = (x - r).abs()
    same = (x == r) | (x.isnan() & r.isnan())
    return torch.where(same, torch.zeros_like(d), torch.where(x.isfinite() & r.isfinite(), d,
                                                              torch.full_like(d, float("inf"))))


def _gradient_excused(e, g, refs, bad):
    """Whether every bad element (kiln `g` differs from eager `e`) is excused by the referees
    `refs` [(name, value)] (see Note [Gradient referees]). At a bad element:
      * kiln is about as close to the float64 gradient r as eager is: |g - r| is within twice
        |e - r| plus the gradient's tolerance (|e - r| is infinite where eager gives NaN or inf
        and r is finite: eager overflowed; where r is not finite it excuses nothing);
      * eager agrees with the float64 gradient only to float32 precision (the program computes
        in float32 somewhere) and kiln agrees with eager or r to float32 tolerance;
      * the rounding-noise referees move the finite gradient of eager under a dispatch mode
        ("moded", see _passthrough_mode) there, to finite values, and kiln's difference from
        eager is within 4x the largest of those moves at that element (a sum of large terms
        that cancel)."""
    if not e.dtype.is_floating_point:
        return False
    eb, gb = e[bad].double(), g[bad].double()
    ok = torch.zeros_like(eb, dtype=torch.bool)
    move = torch.zeros_like(eb)
    rtol, atol = fz.TOLERANCES.get(e.dtype, fz._F32_TOL)
    # the noise moves are measured from eager under a dispatch mode (see _passthrough_mode); with
    # no such run, they say nothing
    base = next((r[bad].double() for name, r in refs if name == "moded" and r.dtype == e.dtype), None)
    for name, r in refs:
        if not r.dtype.is_floating_point:
            continue
        rb = r[bad].double()
        if name == "float64":
            de = torch.where(rb.isfinite() | (eb == rb) | (eb.isnan() & rb.isnan()), _distance(eb, rb),
                             torch.zeros_like(eb))
            ok |= _distance(gb, rb) <= 2 * de + atol + rtol * rb.abs().nan_to_num(0.0, 0.0, 0.0)
            f32ish = ~fz._close(eb, rb, (1e-12, 1e-14)) & fz._close(eb, rb, fz._F32_TOL)
            ok |= f32ish & (fz._close(gb, rb, fz._F32_TOL) | fz._close(gb, eb, fz._F32_TOL))
        elif name == "noisy" and base is not None:
            both = base.isfinite() & rb.isfinite()
            move = torch.maximum(move, torch.where(both, (rb - base).abs(), torch.zeros_like(eb)))
    ok |= (move > 0) & (_distance(gb, eb) <= 4 * move)
    return bool(ok.all())


def check_gradients(fn, program, what, names, ins, e_ins, k_ins, eout, kout, fresh):
    """Compares eager's and kiln's gradients of one call (its inputs before the call `ins`, the
    inputs each side was called on, and their results). Returns (Failure or None, whether kiln's
    result had something to differentiate, compiled backward calls the kiln side ran)."""
    import kiln
    el, kl = fz._leaves(eout, []), fz._leaves(kout, [])
    for i, (a, b) in enumerate(zip(el, kl)):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.requires_grad != b.requires_grad:
            return (fz.Failure("gradient", f"{what}: result leaf {i} requires grad in "
                               f"{'eager, not in kiln' if a.requires_grad else 'kiln, not in eager'}"), False, 0)
    wrt = grad_inputs(e_ins)
    if grad_inputs(k_ins) != wrt:
        return fz.Failure("gradient", f"{what}: the inputs that require grad differ"), False, 0
    ekind, eg = gradients(eout, e_ins, wrt, fresh)
    b0 = kiln.counters()["compiled_backward_calls"]
    kkind, kg = gradients(kout, k_ins, wrt, fresh)
    ran = kiln.counters()["compiled_backward_calls"] - b0
    if ekind != kkind or (ekind == "raise" and type(eg) is not type(kg)):
        def said(kind, v):
            return {"ok": "returned gradients", "none": "had nothing to differentiate"}.get(
                kind, f"raised {type(v).__name__}: {v}")
        kind = "exception" if "raise" in (ekind, kkind) else "gradient"
        return fz.Failure(kind, f"{what}: backward: eager {said(ekind, eg)}; kiln {said(kkind, kg)}"), False, ran
    if ekind != "ok":
        return None, False, ran
    # an argument returned as it is needs no backward: only other results must reach kiln's
    needs = any(all(t is not x for x in k_ins) for t in differentiable(kout))
    STATS["gradient_calls"] += 1
    STATS["compiled_backward_calls"] += ran > 0
    cots = fz.cotangents(differentiable(eout), fresh)
    refs = _referees(fn, program, ins, wrt, fresh, cots)
    with torch.no_grad():
        for j, (i, a, b) in enumerate(zip(wrt, eg, kg)):
            grefs = [(name, (lambda r=r, j=j: (r() or [None] * (j + 1))[j])) for name, r in refs]
            what_j = f"{what}: gradient of {names[i]}"
            # the float64 referee alone first: the noisy ones rerun the program six times
            if fz.compare(a, b, grefs[:1], what_j, excused=_gradient_excused) is None:
                continue
            msg = fz.compare(a, b, grefs, what_j, excused=_gradient_excused)
            if msg is not None:
                return fz.Failure("gradient", msg), needs, ran
    return None, needs, ran
