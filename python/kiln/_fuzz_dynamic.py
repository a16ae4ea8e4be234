"""The fuzzer's --dynamic mode: the same random programs, called over changing sizes through one
kiln.compile, so that dynamic programs (Note [Dynamic sizes] in
runtime/dynamic_program.cpp) are checked against eager at sizes they were not captured at.

Per program: a size v >= 2 that some input has in its first dim (odd seeds: in its last dim,
so that inner lengths change too) is picked; every input dim of size v becomes u for u in SIZES(v) -- the first capture, the second (which may make the dynamic
program), then sizes below, between and above them, 1, and v again. Sizes where eager raises
(the program's literal shapes no longer fit) must raise the same exception type through kiln.
Each call is compared by fuzz.compare_call, as fuzz.check_function compares one (results within
tolerances, written arguments, exception types).
"""

from . import fuzz


def sizes(v):
    return [v, v + 3, 2, 3, v + 1, 2 * v + 5, 1, 17, v + 3]


def _size_to_vary(program, inner=False):
    """The first-dim (inner: last-dim) size of the first input that has one >= 2, or None."""
    for i in program.inputs:
        shape = getattr(i, "shape", ())
        if len(shape) >= 1 and shape[-1 if inner else 0] >= 2:
            return shape[-1 if inner else 0]
    return None


def resized(program, v, u):
    """`program` with every input dim of size v made u (layouts and seeds kept)."""
    return program.copy(inputs=[i.replace(shape=tuple(u if n == v else n for n in i.shape)) for i in program.inputs])


def check_dynamic(program, inner=False):
    """None, or a Failure (program attached) for the first size whose call disagrees with eager.
    Also returns whether kiln made a dynamic program for it."""
    import kiln
    v = _size_to_vary(program, inner)
    if v is None or any(getattr(i, "alias", None) is not None for i in program.inputs):
        return None, False
    try:
        fn = program.function()
    except Exception as e:  # noqa: BLE001
        return fuzz.Failure("invalid", f"the program does not compile as Python: {e}", program), False
    cf = kiln.compile(fn)
    before = kiln.counters()["dynamic_compiles"]
    for u in sizes(v):
        p = resized(program, v, u)
        ins = p.make_inputs()
        if program.train:
            ins = fuzz.requiring_grad(ins)
        names = [i.name for i in p.inputs]
        what = f"call at size {u} (captured at {v})"
        call = fuzz.compare_call(fn, cf, ins, p, names, what)
        failure = call.failure
        if failure is None and program.train and call.ekind != "raise":
            from ._fuzz_training import check_gradients
            failure = check_gradients(fn, p, what, names, ins, call.e_ins, call.k_ins, call.eout, call.kout,
                                      fresh=False)[0]
        if failure is not None:
            failure.program = p
            failure.known = fuzz.known_issue(failure)
            return failure, kiln.counters()["dynamic_compiles"] > before
    return None, kiln.counters()["dynamic_compiles"] > before


def run(seed, count, verbose=False, half=None, train=False):
    """Checks programs seed .. seed+count-1 (in `half`: a torch dtype, or None for float32;
    `train`: gradients too, as --train checks them); returns (failures, how many became
    dynamic)."""
    failures, dynamic = [], 0
    for k in range(count):
        program = fuzz.generate(seed + k, train=train, half=half)
        f, made = check_dynamic(program, inner=(seed + k) % 2 == 1)
        dynamic += made
        if f is not None and not f.known:
            failures.append((seed + k, f))
            if verbose:
                print(f"seed {seed + k}: {f.kind}\n{f.message}\n{f.program}")
    return failures, dynamic
