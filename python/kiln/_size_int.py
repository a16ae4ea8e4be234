"""Sizes Python reads during a capture, and whether Python decided anything on them.

A dynamic program (Note [Dynamic leading sizes] in runtime/dynamic_program.cpp) replays a graph
at sizes it was not captured at. That is only right where Python did not steer on a size: an
`if T > 64`, a `min(n, 16)` or a `range(n)` baked in at capture would be wrong at other sizes.
Inside a capture, every size Python reads (`x.shape`, `x.size()`, `x.numel()`) is a SizeInt: an
int that stays a SizeInt through + - * // % (so `x.view(B, T, C // H, H)` is fine: the two
captures' graphs show how such a size flows into ops) and that marks the capture as soon as
Python does anything else with it -- compares it, branches, hashes, prints, converts it, or
divides it into a float. A marked capture never becomes a dynamic program (it specialises).
`len(x)` returns a plain int (Python converts it), so it marks at once.
"""

_active = []  # the tracers capturing now (innermost last)


def mark(what):
    """Records on the current capture that Python decided on a size."""
    if _active:
        from ._trace import user_location
        t = _active[-1]
        if t.size_read is None:
            t.size_read = f"{what} at {user_location()}"


def _arith(op):
    def f(self, *other):
        v = getattr(int, op)(int.__int__(self), *(int.__int__(o) if isinstance(o, SizeInt) else o for o in other))
        if v is NotImplemented:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return SizeInt(v)
        mark(f"a size used in {op}")
        return v
    return f


def _decision(op):
    def f(self, *other):
        mark(f"a size used in {op}")
        return getattr(int, op)(int.__int__(self), *(int.__int__(o) if isinstance(o, SizeInt) else o for o in other))
    return f


class SizeInt(int):
    """An int Python read as a size during a capture (see the module docstring)."""

    __slots__ = ()

    def __int__(self):  # int(x) sheds the mark's tracking: a decision
        mark("int() of a size")
        return int.__int__(self)


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
            "__rfloordiv__", "__mod__", "__rmod__", "__neg__", "__pos__"):
    setattr(SizeInt, _op, _arith(_op))
for _op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__hash__", "__index__",
            "__float__", "__complex__", "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__abs__",
            "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lshift__", "__rshift__",
            "__divmod__", "__rdivmod__", "__round__", "__trunc__", "__floor__", "__ceil__", "__str__", "__repr__",
            "__format__"):
    setattr(SizeInt, _op, _decision(_op))


def wrap(value):
    """A size read's result with its ints as SizeInts."""
    import torch
    if isinstance(value, torch.Size):
        return torch.Size([SizeInt(int.__int__(v)) for v in value])
    if isinstance(value, int) and not isinstance(value, bool):
        return SizeInt(int.__int__(value))
    return value


def plain(value):
    """`value` with a SizeInt (or a torch.Size of them) as plain ints; marks the capture, since
    the size leaves the traced code (a returned size is baked in)."""
    import torch
    if isinstance(value, SizeInt):
        mark("a size returned")
        return int.__int__(value)
    if isinstance(value, torch.Size) and any(isinstance(v, SizeInt) for v in value):
        mark("a size returned")
        return torch.Size([int.__int__(v) for v in value])
    return value
