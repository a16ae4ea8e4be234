"""kiln.minify: shrink a failing program while it keeps failing, then print a standalone reproducer.

    import kiln
    res = kiln.minify(fn_source_or_program, inputs, predicate)   # prints the reproducer
    res.source        # the reproducer: imports, inputs built from a fixed seed (or literal
                      # values), the function, the comparison with eager; run it with python
    res.program       # the shrunk program (a kiln.fuzz.Program), None for a plain function
    res.inputs        # the shrunk inputs

What it accepts:
  * a kiln.fuzz.Program (what `python -m kiln.fuzz` generates; inputs may be None),
  * Python source text defining a function (the first `def`, or `name=`; other top-level code
    such as imports and helpers is kept as is) plus its example inputs (positional tensors),
  * a plain Python function plus its example inputs.

What it shrinks, trying each change and keeping it only while `predicate` still holds:
  * source and programs: deletes statements (in chunks, then one by one), replaces an op's
    result by one of its operands (`v3 = torch.exp(v1 * 2)` -> `v3 = v1 * 2` -> `v3 = v1`),
    replaces an `if` by one of its branches, drops returned values, unused statements and
    unused inputs, shrinks input shapes (a size shared by several inputs shrinks in all of
    them at once, so broadcasts stay valid), makes inputs contiguous and drops inf/nan;
  * a plain function: only its inputs' shapes (each tensor is narrowed, keeping its values),
    since its code is opaque. Its reproducer uses `inspect.getsource(fn)`, so the function must
    be defined in a file (or be a lambda written on one line) and must not need other globals
    of its module than torch/F/math.

predicate(fn, inputs) -> bool: True while the failure persists. `fn` is the candidate function
(freshly built from the candidate source), `inputs` the candidate inputs. It should be cheap
and deterministic; an exception inside it counts as False. The default predicate is "kiln's
result differs from eager's" (kiln.fuzz.check_function: capture, cached call, fresh inputs;
for a Program with .train set, as `python -m kiln.fuzz --train` makes them, gradients too, and
its reproducer calls repro_check(..., train=True)).
"""

import ast
import inspect
import math
import textwrap
import time

import torch

__all__ = ["minify", "MinifyResult", "reproducer_source"]


class MinifyResult:
    """The shrunk case: .program (kiln.fuzz.Program, or None for a plain function), .fn,
    .inputs, .source (the standalone reproducer), .evals (predicate calls)."""

    def __init__(self, program, fn, inputs, source, evals, steps):
        self.program, self.fn, self.inputs = program, fn, inputs
        self.source, self.evals, self.steps = source, evals, steps

    def __str__(self):
        return self.source

    def __repr__(self):
        n = len(self.program.body) if self.program is not None else "?"
        return f"MinifyResult({n} statements, {self.evals} predicate calls)"


def _fuzz():
    from . import fuzz  # lazily: `python -m kiln.fuzz` must not find kiln.fuzz already imported
    return fuzz


# ---- parsing user source into a Program -------------------------------------------------------
def program_from_source(source, inputs, name=None):
    """A Program from source text defining a function; inputs: its example tensors."""
    fz = _fuzz()
    source = textwrap.dedent(source)
    tree = ast.parse(source)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and (name is None or n.name == name)]
    if not funcs:
        raise ValueError(f"kiln.minify: no function {'named ' + name if name else ''} in the source")
    fdef = funcs[0]
    params = [a.arg for a in fdef.args.args]
    if fdef.args.vararg or fdef.args.kwarg or fdef.args.kwonlyargs:
        raise ValueError("kiln.minify: the function must take plain positional parameters")
    if len(params) != len(inputs):
        raise ValueError(f"kiln.minify: {fdef.name} takes {len(params)} parameters, {len(inputs)} inputs given")
    fdef.decorator_list = []
    body = list(fdef.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # docstring
    outputs = []
    if body and isinstance(body[-1], ast.Return):
        ret = body.pop()
        if ret.value is None:
            outputs = ["None"]
        elif isinstance(ret.value, ast.Tuple):
            outputs = [ast.unparse(e) for e in ret.value.elts]
        else:
            outputs = [ast.unparse(ret.value)]
    rest = [n for n in tree.body if n is not fdef]
    preamble = "\n".join(ast.unparse(n) for n in rest)
    ins = []
    for p, x in zip(params, inputs):
        ins.append(fz.TensorInput(p, x) if isinstance(x, torch.Tensor) else _ValueInput(p, x))
    stmts = [ast.unparse(s) for s in body]
    return fz.Program(ins, stmts, outputs, name=fdef.name, preamble=preamble, has_break=has_break(stmts))


class _ValueInput:
    """A non-tensor argument (a Python number, None, ...): passed as is, never shrunk."""

    def __init__(self, name, value):
        self.name, self.value = name, value
        self.shape, self.dtype = None, None

    def make(self, fresh=False):
        return self.value

    def __repr__(self):
        return f"_ValueInput({self.name}={self.value!r})"


# ---- statement analysis ------------------------------------------------------------------------
def _loads(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _stores(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _children(expr):
    """Sub-expressions that could stand in for an expression's value (its operands)."""
    out = []
    if isinstance(expr, ast.Call):
        if isinstance(expr.func, ast.Attribute):
            out.append(expr.func.value)  # the receiver of a method call
        out += list(expr.args) + [k.value for k in expr.keywords]
    elif isinstance(expr, ast.BinOp):
        out += [expr.left, expr.right]
    elif isinstance(expr, ast.UnaryOp):
        out.append(expr.operand)
    elif isinstance(expr, ast.Compare):
        out += [expr.left] + list(expr.comparators)
    elif isinstance(expr, ast.BoolOp):
        out += list(expr.values)
    elif isinstance(expr, (ast.Subscript, ast.Attribute)):
        out.append(expr.value)
    elif isinstance(expr, ast.IfExp):
        out += [expr.body, expr.orelse]
    elif isinstance(expr, (ast.Tuple, ast.List)):
        out += list(expr.elts)
    elif isinstance(expr, ast.Starred):
        out.append(expr.value)
    return out


_MODULE_NAMES = {"torch", "F", "math", "nn", "np"}


def _operand_exprs(expr):
    """Sub-expressions reading a variable (not bare constants or modules), outermost first."""
    out = []
    for c in _children(expr):
        if _loads(c) - _MODULE_NAMES:
            out.append(c)
    return out


# ---- the shrinker --------------------------------------------------------------------------------
class _Shrinker:
    def __init__(self, predicate, max_evals, time_limit, verbose, log):
        self.predicate = predicate
        self.max_evals = max_evals
        self.deadline = time.time() + time_limit
        self.verbose = verbose
        self.log = log
        self.evals = 0
        self.steps = []
        self.seen = {}

    def budget(self):
        return self.evals < self.max_evals and time.time() < self.deadline

    def holds(self, prog):
        key = _key(prog)
        if key in self.seen:
            return self.seen[key]
        if not self.budget():
            return False
        self.evals += 1
        try:
            ok = bool(_call_predicate(self.predicate, prog))
        except Exception:  # noqa: BLE001 - a broken candidate is not the failure
            ok = False
        self.seen[key] = ok
        return ok

    def accept(self, what):
        self.steps.append(what)
        if self.verbose:
            self.log(f"[minify] {what}")


def _key(prog):
    ins = tuple((type(i).__name__, i.name, getattr(i, "shape", None), str(getattr(i, "layout", "")),
                 getattr(i, "specials", None),
                 (i.tensor.stride(), i.tensor.storage_offset()) if hasattr(i, "tensor") else None)
                for i in prog.inputs)
    return (tuple(prog.body), tuple(prog.outputs), ins)


def _call_predicate(pred, prog):
    fn = prog.function()
    if getattr(pred, "isolated", False):
        return pred(fn, None, program=prog)
    inputs = prog.make_inputs()
    if getattr(pred, "wants_program", False):
        return pred(fn, inputs, program=prog)
    return pred(fn, inputs)


def _shrink_program(prog, sh):
    changed = True
    while changed and sh.budget():
        changed = False
        for step in (_drop_outputs, _delete_chunks, _dce, _replace_by_operand, _inline_aliases, _flatten_ifs,
                     _drop_unused_inputs, _shrink_shapes, _simplify_inputs):
            new = step(prog, sh)
            if new is not None:
                prog, changed = new, True
    return prog


def has_break(body):
    """Whether statements read tensor data into Python (a graph break), by their text."""
    return any(x in st for st in body for x in (".item()", "if ", "bool(", "int(", "float(", ".tolist()",
                                                ".numpy()", "while "))


def _well_formed(prog):
    """Every name a candidate reads is defined before (a parameter, an earlier statement's
    target, the preamble, torch/F/math or a builtin): a deletion must not leave a hole."""
    import builtins
    fz = _fuzz()
    if not isinstance(prog, fz.Program):
        return True
    defined = {i.name for i in prog.inputs} | {"torch", "F", "math"} | set(dir(builtins))
    if prog.preamble:
        try:
            for node in ast.walk(ast.parse(prog.preamble)):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    defined.add(node.name)
                elif isinstance(node, ast.alias):
                    defined.add((node.asname or node.name).split(".")[0])
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
        except SyntaxError:
            return True
    try:
        for st in prog.body:
            node = ast.parse(st)
            if _loads(node) - defined - _stores(node):
                return False
            defined |= _stores(node)
        return all(not (_loads(ast.parse(o, mode="eval")) - defined) for o in prog.outputs)
    except SyntaxError:
        return False


def _try(prog, sh, cand, what):
    if getattr(prog, "preamble", None) is not None and prog.has_break:
        cand.has_break = has_break(cand.body)
    if _key(cand) == _key(prog) or not _well_formed(cand):
        return None
    if sh.holds(cand):
        sh.accept(what)
        return cand
    return None


def _drop_outputs(prog, sh):
    out = None
    while len(prog.outputs) > 1 and sh.budget():
        for i in range(len(prog.outputs)):
            new = _try(prog, sh, prog.copy(outputs=[prog.outputs[i]]), f"return only {prog.outputs[i]}")
            if new is not None:
                prog = out = new
                break
        else:
            for i in range(len(prog.outputs)):
                outs = prog.outputs[:i] + prog.outputs[i + 1:]
                new = _try(prog, sh, prog.copy(outputs=outs), f"drop output {prog.outputs[i]}")
                if new is not None:
                    prog = out = new
                    break
            else:
                break
    return out


def _delete_chunks(prog, sh):
    """Delta debugging over statements: delete chunks (halves, quarters, ...), then singles,
    from the end backwards (a deletion leaves the indices before it unchanged)."""
    out = None
    size = max(1, len(prog.body) // 2)
    while size >= 1 and sh.budget():
        progressed = False
        i = len(prog.body) - size
        while i >= 0 and sh.budget():
            cand = prog.copy(body=prog.body[:i] + prog.body[i + size:])
            new = _try(prog, sh, cand, f"delete statements {i}..{i + size - 1}")
            if new is not None:
                prog = out = new
                progressed = True
            i -= size
        if not progressed:
            size //= 2
    return out


def _dce(prog, sh):
    """Deletes statements whose results nothing reads (one candidate for all of them)."""
    live = set()
    for o in prog.outputs:
        live |= _loads(ast.parse(o, mode="eval"))
    keep = []
    for st in reversed(prog.body):
        node = ast.parse(st)
        stores = _stores(node)
        # keep statements with effects (in-place method calls on live values, asserts, ...)
        effectful = not isinstance(node.body[0], (ast.Assign, ast.If)) or not stores
        if stores & live or effectful:
            keep.append(st)
            live |= _loads(node)
    keep.reverse()
    if len(keep) == len(prog.body):
        return None
    return _try(prog, sh, prog.copy(body=keep), f"delete {len(prog.body) - len(keep)} unused statements")


def _replace_by_operand(prog, sh):
    out = None
    i = len(prog.body) - 1
    while i >= 0 and sh.budget():
        node = ast.parse(prog.body[i]).body[0]
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            for sub in _operand_exprs(node.value):
                st = f"{target} = {ast.unparse(sub)}"
                cand = prog.copy(body=prog.body[:i] + [st] + prog.body[i + 1:])
                new = _try(prog, sh, cand, f"`{prog.body[i]}` -> `{st}`")
                if new is not None:
                    prog = out = new
                    i += 1  # try to shrink the same statement further
                    break
        i -= 1
    # the returned expressions too
    for k, o in enumerate(list(prog.outputs)):
        expr = ast.parse(o, mode="eval").body
        for sub in _operand_exprs(expr):
            outs = prog.outputs[:k] + [ast.unparse(sub)] + prog.outputs[k + 1:]
            new = _try(prog, sh, prog.copy(outputs=outs), f"return {ast.unparse(sub)} instead of {o}")
            if new is not None:
                prog = out = new
                break
    return out


class _Rename(ast.NodeTransformer):
    def __init__(self, old, new):
        self.old, self.new = old, new

    def visit_Name(self, node):
        if node.id == self.old:
            return ast.copy_location(ast.Name(id=self.new, ctx=node.ctx), node)
        return node


def _rename(text, old, new, mode="exec"):
    tree = _Rename(old, new).visit(ast.parse(text, mode=mode))
    return ast.unparse(tree)


def _inline_aliases(prog, sh):
    """`a = b` (a plain copy of a name): deletes it and reads b where a was read."""
    out = None
    i = 0
    while i < len(prog.body) and sh.budget():
        node = ast.parse(prog.body[i]).body[0]
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Name) and node.targets[0].id != node.value.id:
            a, b = node.targets[0].id, node.value.id
            rest = prog.body[i + 1:]
            if not any(a in _stores(ast.parse(st)) or b in _stores(ast.parse(st)) for st in rest):
                body = prog.body[:i] + [_rename(st, a, b) for st in rest]
                outs = [_rename(o, a, b, "eval") for o in prog.outputs]
                new = _try(prog, sh, prog.copy(body=body, outputs=outs), f"inline {a} = {b}")
                if new is not None:
                    prog = out = new
                    continue
        i += 1
    return out


def _flatten_ifs(prog, sh):
    out = None
    for i, st in enumerate(prog.body):
        node = ast.parse(st).body[0]
        if not isinstance(node, ast.If):
            continue
        for branch, what in ((node.body, "then"), (node.orelse, "else")):
            if not branch:
                continue
            stmts = [ast.unparse(s) for s in branch]
            cand = prog.copy(body=prog.body[:i] + stmts + prog.body[i + 1:])
            new = _try(prog, sh, cand, f"keep only the {what} branch of `if {ast.unparse(node.test)}`")
            if new is not None:
                return new
    return out


def _drop_unused_inputs(prog, sh):
    used = set()
    for st in prog.body:
        used |= _loads(ast.parse(st))
    for o in prog.outputs:
        used |= _loads(ast.parse(o, mode="eval"))
    unused = [i for i in prog.inputs if i.name not in used]
    if not unused:
        return None
    cand = prog.copy(inputs=[i for i in prog.inputs if i.name in used])
    return _try(prog, sh, cand, f"drop unused inputs {[i.name for i in unused]}")


def _with_shape(inp, shape):
    fz = _fuzz()
    if isinstance(inp, fz.InputSpec):
        return inp.replace(shape=tuple(shape))
    t = inp.tensor
    for d, (old, new) in enumerate(zip(t.shape, shape)):
        if new != old:
            t = t.narrow(d, 0, new)
    return fz.TensorInput(inp.name, t)


def _shrink_shapes(prog, sh):
    out = None
    shaped = [i for i in prog.inputs if getattr(i, "shape", None) is not None]
    # a size shared by several inputs shrinks in all of them at once
    sizes = sorted({s for i in shaped for s in i.shape if s > 1}, reverse=True)
    for n in sizes:
        for m in sorted({1, n // 2, n - 1}):
            if m >= n or not sh.budget():
                continue
            new_inputs = [_with_shape(i, [m if s == n else s for s in i.shape]) if i in shaped else i
                          for i in prog.inputs]
            new = _try(prog, sh, prog.copy(inputs=new_inputs), f"size {n} -> {m} in every input")
            if new is not None:
                prog = out = new
                shaped = [i for i in prog.inputs if getattr(i, "shape", None) is not None]
                break
    # then each dim of each input, halving while it holds
    for k in range(len(prog.inputs)):
        inp = prog.inputs[k]
        if getattr(inp, "shape", None) is None:
            continue
        for d in range(len(inp.shape)):
            while sh.budget():
                inp = prog.inputs[k]
                n = inp.shape[d]
                done = True
                for m in sorted({1, n // 2, n - 1}):
                    if m >= n or m < 1 and n <= 1:
                        continue
                    shape = list(inp.shape)
                    shape[d] = m
                    cand = prog.copy(inputs=prog.inputs[:k] + [_with_shape(inp, shape)] + prog.inputs[k + 1:])
                    new = _try(prog, sh, cand, f"{inp.name}: dim {d} {n} -> {m}")
                    if new is not None:
                        prog = out = new
                        done = False
                        break
                if done:
                    break
    return out


def _simplify_inputs(prog, sh):
    fz = _fuzz()
    out = None
    for k, inp in enumerate(prog.inputs):
        if isinstance(inp, fz.InputSpec):
            for field, value in (("layout", "contiguous"), ("specials", 0.0)):
                if getattr(inp, field) != value:
                    cand = prog.copy(inputs=prog.inputs[:k] + [inp.replace(**{field: value})] + prog.inputs[k + 1:])
                    new = _try(prog, sh, cand, f"{inp.name}: {field} -> {value!r}")
                    if new is not None:
                        prog = out = new
                        inp = prog.inputs[k]
        elif isinstance(inp, fz.TensorInput) and not inp.tensor.is_contiguous():
            cand = prog.copy(inputs=prog.inputs[:k] + [fz.TensorInput(inp.name, inp.tensor.contiguous())]
                             + prog.inputs[k + 1:])
            new = _try(prog, sh, cand, f"{inp.name}: contiguous")
            if new is not None:
                prog = out = new
    return out


# ---- plain functions --------------------------------------------------------------------------------
class _FunctionCase:
    """A plain callable: only its inputs shrink."""

    def __init__(self, fn, inputs):
        fz = _fuzz()
        self.fn = fn
        self.inputs = [fz.TensorInput(f"x{i}", x) if isinstance(x, torch.Tensor) else _ValueInput(f"x{i}", x)
                       for i, x in enumerate(inputs)]
        self.body, self.outputs, self.has_break = [], [], False
        self.name = getattr(fn, "__name__", "f")

    def copy(self, **kw):
        c = _FunctionCase.__new__(_FunctionCase)
        c.__dict__.update(self.__dict__)
        c.__dict__.update(kw)
        return c

    def function(self, dtype_map=None):
        return self.fn

    def make_inputs(self, fresh=False):
        return [i.make(fresh) for i in self.inputs]


def _shrink_function(case, sh):
    changed = True
    while changed and sh.budget():
        changed = False
        for step in (_shrink_shapes, _simplify_inputs):
            new = step(case, sh)
            if new is not None:
                case, changed = new, True
    return case


# ---- reproducers ----------------------------------------------------------------------------------------
def _literal_source(name, t, fresh_var="fresh"):
    """Source building `t` from literal values (its storage span), keeping sizes and strides."""
    span = t.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    fz = _fuzz()
    dt = fz.DTYPE_SRC.get(t.dtype, str(t.dtype))
    if span > 4096:
        return (f"    # {name}: {span} values are too many to write out; a seeded random tensor of the same\n"
                f"    # sizes and strides stands in (the failure may depend on the original values)\n"
                f"    {name} = fresh_like(torch.empty_strided({tuple(t.shape)!r}, {tuple(t.stride())!r}, dtype={dt}), 99)\n")
    flat = torch.as_strided(t.detach().cpu(), (span,), (1,), 0) if span else t.new_empty(0)
    vals = flat.tolist()
    body = repr(vals)  # nan / inf: the reproducer defines them
    return (f"    {name} = torch.tensor({body}, dtype={dt}).as_strided({tuple(t.shape)!r}, {tuple(t.stride())!r}, "
            f"{t.storage_offset()})\n")


def reproducer_source(case, message="", expect_compiled=None):
    """The standalone reproducer of a Program (or a plain-function case) as Python source."""
    fz = _fuzz()
    program = case if isinstance(case, fz.Program) else None
    if expect_compiled is None:
        expect_compiled = not getattr(case, "has_break", False)
    parts = [f'"""{_doc(message)}\nWritten by kiln.minify. Run: python this_file.py -- it fails (AssertionError, or the\n'
             f'process dies) while the bug is there and prints OK once it is fixed.\n"""',
             "import math\n\nimport torch\nimport torch.nn.functional as F\n\nimport kiln\n\ninf, nan = math.inf, math.nan\n"]
    has_tensors = any(isinstance(i, fz.TensorInput) for i in case.inputs)
    parts.append(fz.REPRO_SOURCES["make_input"])
    if has_tensors:
        parts.append(fz.REPRO_SOURCES["fresh_like"])
    if program is not None:
        if program.preamble:
            parts.append(program.preamble + "\n")
        parts.append(program.source())
        fname = program.name
    else:
        src, fname = _function_source(case.fn)
        parts.append(src)
    lines = ["def make_inputs(fresh):", "    s = 1000 if fresh else 0"]
    names = []
    for inp in case.inputs:
        if isinstance(inp, fz.InputSpec):
            lines.append(f"    {inp.name} = {inp.source('s')}")
        elif isinstance(inp, fz.TensorInput):
            lines.append(_literal_source(inp.name, inp.tensor).rstrip("\n"))
            lines.append(f"    if fresh:\n        {inp.name} = fresh_like({inp.name}, 4321)")
        else:
            lines.append(f"    {inp.name} = {inp.value!r}")
        names.append(inp.name)
    lines.append(f"    return [{', '.join(names)}]")
    parts.append("\n".join(lines) + "\n")
    train = bool(getattr(case, "train", False))
    if train:  # float inputs require grad; gradients are compared too
        parts += [fz.REPRO_SOURCES["requiring_grad"], fz.REPRO_SOURCES["cotangents"]]
    parts.append(fz.REPRO_SOURCES["repro_check"])
    args = f"expect_compiled={expect_compiled}" + (", train=True" if train else "")
    parts.append(f'if __name__ == "__main__":\n    repro_check({fname}, make_inputs, {args})\n'
                 f'    print("OK: kiln matches eager{" (results and gradients)" if train else ""}")\n')
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)


def _doc(message):
    return (message or "kiln reproducer").replace('"""', "'''").replace("\\", "\\\\")


def _function_source(fn):
    """(source defining fn, its name) for a plain function; best effort for lambdas."""
    name = getattr(fn, "__name__", "f")
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return (f"# the source of {name} is not available: define it here\n"
                f"def {name}(*args):\n    raise NotImplementedError\n"), name
    if name == "<lambda>":
        try:
            lambdas = [n for n in ast.walk(ast.parse(src.strip().rstrip(","))) if isinstance(n, ast.Lambda)]
        except SyntaxError:
            lambdas = []
        if len(lambdas) == 1:
            return f"f = {ast.unparse(lambdas[0])}\n", "f"
        return f"# could not isolate the lambda from:\n# " + src.replace("\n", "\n# ") + "\nf = None\n", "f"
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            node.decorator_list = []  # e.g. @kiln.compile
    return ast.unparse(tree) + "\n", name


# ---- the entry point ------------------------------------------------------------------------------------------
def minify(fn_source_or_program, inputs=None, predicate=None, *, name=None, max_evals=400, time_limit=120.0,
           verbose=False, show=True, message=None, log=print):
    """Shrinks a failing program while `predicate(fn, inputs)` holds; prints (show=True) and
    returns a MinifyResult whose .source is a standalone reproducer. See the module doc.

    max_evals / time_limit bound the predicate calls and the time spent (the best case found
    so far is returned when either runs out). Raises ValueError when the predicate does not
    hold for the case as given."""
    fz = _fuzz()
    target = fn_source_or_program
    if isinstance(target, fz.Program):
        case = target.copy()
        if inputs is not None:  # explicit tensors replace the seeded inputs
            case.inputs = [fz.TensorInput(i.name, x) if isinstance(x, torch.Tensor) else _ValueInput(i.name, x)
                           for i, x in zip(case.inputs, inputs)]
    elif isinstance(target, str):
        if inputs is None:
            raise ValueError("kiln.minify: source text needs its example inputs")
        case = program_from_source(target, list(inputs), name)
    elif callable(target):
        if inputs is None:
            raise ValueError("kiln.minify: a function needs its example inputs")
        case = _FunctionCase(getattr(target, "_fn", target), list(inputs))
    else:
        raise TypeError(f"kiln.minify: expected a kiln.fuzz.Program, source text or a function, "
                        f"got {type(target).__name__}")
    if predicate is None:
        predicate = _default_predicate(case)
    sh = _Shrinker(predicate, max_evals, time_limit, verbose, log)
    if not sh.holds(case):
        raise ValueError("kiln.minify: the predicate does not hold for the case as given (nothing fails)")
    if isinstance(case, fz.Program):
        case = _shrink_program(case, sh)
    else:
        case = _shrink_function(case, sh)
    src = reproducer_source(case, message or _message(case, predicate))
    if show:
        log(src)
    return MinifyResult(case if isinstance(case, fz.Program) else None, case.function(), case.make_inputs(), src,
                        sh.evals, sh.steps)


def _default_predicate(case):
    fz = _fuzz()
    if isinstance(case, fz.Program) and all(isinstance(i, fz.InputSpec) for i in case.inputs):
        f = fz.check_program(case)
        if f is None:
            raise ValueError("kiln.minify: kiln matches eager on this program (nothing to minify)")
        return fz.same_failure(f.kind)

    def differs(fn, inputs):
        return fz.check_function(fn, inputs, [fz.fresh_like(t, 4321) for t in inputs],
                                 expect_compiled=not getattr(case, "has_break", False),
                                 train=bool(getattr(case, "train", False))) is not None
    return differs


def _message(case, predicate):
    fz = _fuzz()
    try:
        fresh = case.make_inputs(True)
        f = fz.check_function(case.function(), case.make_inputs(), fresh,
                              expect_compiled=not getattr(case, "has_break", False),
                              program=case if isinstance(case, fz.Program) else None,
                              train=bool(getattr(case, "train", False)))
    except Exception as e:  # noqa: BLE001
        return f"kiln reproducer (checking it raised {e!r})"
    if f is None:
        return "kiln reproducer (kiln matches eager here: the predicate tests something else)"
    return f"kiln reproducer: {f.kind}: {f.message}"


_ = math  # the reproducer's literals use math.inf / math.nan via `inf, nan`
