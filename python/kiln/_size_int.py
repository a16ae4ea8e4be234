"""Sizes and int arguments Python reads during a capture, and whether Python decided on them.

A dynamic program (Note [Dynamic sizes] in runtime/dynamic_program.cpp) replays a graph
at sizes it was not captured at. That is only right where Python did not steer on a size: an
`if T > 64`, a `min(n, 16)` or a `float(n)` baked in at capture would be wrong at other sizes.
Inside a capture, every size Python reads (`x.shape`, `x.size()`, `x.numel()`) and every plain
int positional argument is a SizeInt: an int that stays a SizeInt through + - * // % (so
`x.view(B, T, C // H, H)` is fine: the two captures' graphs show how such a value flows into
ops) and that records, per source (tensor sizes, or the argument it came from), where Python
first did anything else with it -- compared it, branched, hashed, printed, converted it, or
divided it into a float. A capture that decided on a tensor size never becomes a dynamic
program; an int argument Python decided on may not change between the two captures.
`len(x)` returns a plain int (Python converts it), so it counts as a decision at once.

Relation guards: a size read from an argument (`x.shape[1]`, `x.size(0)`), shifted or scaled by
constants, keeps its origin (leaf, dim, k, c: the value is k * size + c). Comparing it with a
constant (`if T > 64`, `min(T, 64)`) is then not a decision but a constraint -- (origin, op,
constant, result) in Tracer.constraints -- which the dynamic program turns into a range of its
symbol (_dynamic.symbol_range): sizes on the other side of the comparison miss the guards and
capture again, never run a program traced down the other branch.
"""

SIZES = "size"  # the source of every tensor size Python reads

_active = []  # the tracers capturing now (innermost last)


def mark(what, sources=(SIZES,)):
    """Records on the current capture that Python decided on values from `sources`."""
    if _active:
        from ._trace import user_location
        decided = _active[-1].decided
        where = None
        for src in sources:
            if src not in decided:
                where = where or f"{what} at {user_location()}"
                decided[src] = where


_COMPARE = {"__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}


def constrain(value, op, const, result):
    """Records `value op const` == result on the current capture (value has an origin)."""
    if _active:
        leaf, dim, k, c = value.origin
        _active[-1].constraints.append((leaf, dim, k, c, op, int(const), bool(result)))


def _raw(v):
    """A SizeInt as its plain int (without counting as a decision); anything else as it is."""
    return int.__int__(v) if isinstance(v, SizeInt) else v


def _sources(*values):
    out = frozenset()
    for v in values:
        if isinstance(v, SizeInt):
            out |= v.sources
    return out


def _origin(op, self, other):
    """The origin of `self op other` when it is still k * size + c, else None."""
    if self.origin is None or isinstance(other, SizeInt) or (other is not None and type(other) is not int):
        return None
    leaf, dim, k, c = self.origin
    if op in ("__add__", "__radd__"):
        return leaf, dim, k, c + other
    if op == "__sub__":
        return leaf, dim, k, c - other
    if op == "__rsub__":
        return leaf, dim, -k, other - c
    if op in ("__mul__", "__rmul__"):
        return leaf, dim, k * other, c * other
    if op == "__neg__":
        return leaf, dim, -k, -c
    if op == "__pos__":
        return self.origin
    return None


def _arith(op):
    def f(self, *other):
        v = getattr(int, op)(int.__int__(self), *map(_raw, other))
        if v is NotImplemented:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return SizeInt(v, _sources(self, *other), _origin(op, self, other[0] if other else None))
        mark(f"a size used in {op}", _sources(self, *other))
        return v
    return f


def _comparison(op):
    def f(self, other):
        v = getattr(int, op)(int.__int__(self), _raw(other))
        if self.origin is not None and type(other) is int and v is not NotImplemented:
            constrain(self, _COMPARE[op], other, v)  # a relation guard, not a decision
        else:
            mark(f"a size used in {op}", _sources(self, other))
        return v
    return f


def _decision(op):
    def f(self, *other):
        mark(f"a size used in {op}", _sources(self, *other))
        return getattr(int, op)(int.__int__(self), *map(_raw, other))
    return f


class SizeInt(int):
    """An int Python read as a size, or got as an argument, during a capture (see the module
    docstring); `sources`: where its value came from."""

    def __new__(cls, value, sources=frozenset((SIZES,)), origin=None):
        self = int.__new__(cls, value)
        self.sources = sources
        self.origin = origin  # (leaf, dim, k, c): k * (leaf's size at dim) + c, or None
        return self

    def __int__(self):  # int(x) sheds the tracking: a decision
        mark("int() of a size", self.sources)
        return int.__int__(self)

    def __reduce__(self):  # copies and pickles are plain ints
        return (int, (int.__int__(self),))


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
            "__rfloordiv__", "__mod__", "__rmod__", "__neg__", "__pos__"):
    setattr(SizeInt, _op, _arith(_op))
for _op in _COMPARE:
    setattr(SizeInt, _op, _comparison(_op))
for _op in ("__eq__", "__ne__", "__bool__", "__hash__", "__index__",
            "__float__", "__complex__", "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__abs__",
            "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lshift__", "__rshift__",
            "__divmod__", "__rdivmod__", "__round__", "__trunc__", "__floor__", "__ceil__", "__str__", "__repr__",
            "__format__"):
    setattr(SizeInt, _op, _decision(_op))


def wrap(value, sources=frozenset((SIZES,)), leaf=None, dim=None):
    """A size read's result (or an int argument) with its ints as SizeInts; `leaf`: the
    argument the sizes were read from (their origin), `dim`: the dim of a single size."""
    import torch
    if isinstance(value, torch.Size):
        return torch.Size([SizeInt(int.__int__(v), sources, None if leaf is None else (leaf, d, 1, 0))
                           for d, v in enumerate(value)])
    if isinstance(value, int) and not isinstance(value, bool):
        origin = None if leaf is None or dim is None else (leaf, dim, 1, 0)
        return SizeInt(int.__int__(value), sources, origin)
    return value


def plain(value):
    """`value` with a SizeInt (or a torch.Size of them) as plain ints; a decision, since the
    value leaves the traced code (a returned size is baked in)."""
    import torch
    if isinstance(value, SizeInt):
        mark("a size returned", value.sources)
        return int.__int__(value)
    if isinstance(value, torch.Size) and any(isinstance(v, SizeInt) for v in value):
        mark("a size returned", _sources(*value))
        return torch.Size([int.__int__(v) for v in value])
    return value
