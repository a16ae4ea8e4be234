"""Guards for plain values a function reads through containers and objects: `CFG["scale"]`,
`LAYERS[0]`, `self.config.eps`, `ns.flag`.

kiln does not trace Python bytecode, so it cannot see which of them the function read; the
trace bakes whatever it read into the graph as constants. Every container or plain object the
function can reach besides its arguments (a referenced global, a closure cell, an attribute of
the module or of one of its submodules) is therefore guarded by a snapshot of its contents:
the type and value of each number, string, bool, None, dtype and device inside it, to a few
levels deep; the identity of functions, modules, tensors and other objects inside it. A call
whose snapshot differs from the one taken at capture recompiles (a changed value can change
the graph), so a program built for `CFG["scale"] == 2.0` never runs for 3.0.

Limits: a container with more than MAX_ITEMS entries, or deeper than MAX_DEPTH, is guarded
by identity and length only (its contents can change unseen); values reached only through
the globals of another function the traced one calls are not guarded.
"""

import types

import torch

# Values guarded by type and value (as scalar arguments are); the trace bakes them in.
SIMPLE_VALUE_TYPES = (type(None), bool, int, float, str, torch.dtype, torch.device)

MAX_DEPTH = 3
MAX_ITEMS = 64

# Keys every nn.Module instance has (hooks, parameter stores, ...): not user state.
MODULE_KEYS = frozenset(vars(torch.nn.Module()))


class Identity:
    """An object compared by identity inside a snapshot (a tensor: which one a container or an
    attribute holds; tensors themselves do not compare to a bool)."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return type(other) is Identity and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


class Snapshot(tuple):
    """A snapshot as a guard value: compared by equality, its own type so the guard builder
    treats it as a value to compare (a plain tuple argument is not one)."""
    __slots__ = ()


def _is_container(v):
    return isinstance(v, (dict, list, tuple, set, frozenset, types.SimpleNamespace))


def _user_type(t):
    return t.__module__ not in ("builtins", "torch") and not t.__module__.startswith("torch.")


def _slot_names(t):
    """The __slots__ attributes of a class and its bases (dataclass(slots=True) among them)."""
    names = []
    for c in t.__mro__:
        slots = vars(c).get("__slots__", ())
        names += [slots] if isinstance(slots, str) else [n for n in slots if n not in ("__dict__", "__weakref__")]
    return names


def _is_plain_object(v):
    """An instance of a user class (config objects, dataclasses, __slots__ classes), not a type,
    module, function, tensor or nn.Module."""
    if isinstance(v, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                      torch.Tensor, torch.nn.Module)):
        return False
    return _user_type(type(v)) and (hasattr(v, "__dict__") or bool(_slot_names(type(v))))


def class_attributes(cls, stop=None):
    """(name, value) of the class-level attributes of user class `cls` and its user bases (below
    `stop`, e.g. nn.Module), outermost last: what `obj.name` reads when the instance has no
    attribute of that name."""
    out, seen = [], set()
    for c in cls.__mro__:
        if c is stop or c is object or not _user_type(c):
            break
        for k, v in vars(c).items():
            if not k.startswith("__") and k not in seen and not callable(v) and \
                    not isinstance(v, (staticmethod, classmethod, property)):
                seen.add(k)
                out.append((c, k, v))
    return out


def worth_guarding(v):
    """Whether `v` (reached besides the arguments) holds plain values a trace could read."""
    return _is_container(v) or _is_plain_object(v)


def contents(v):
    """What a container or plain object holds, as (is_item, key, value): dict entries, list and
    tuple elements (items), and attributes, from __dict__ and __slots__. None for anything else
    (sets hold no addressable values). Callers stop at MAX_ITEMS of them and MAX_DEPTH levels."""
    if isinstance(v, dict):
        return [(True, k, x) for k, x in list(v.items())]
    if isinstance(v, (list, tuple)):
        return [(True, i, x) for i, x in enumerate(v)]
    if isinstance(v, types.SimpleNamespace) or _is_plain_object(v):
        items = [(False, k, x) for k, x in list(vars(v).items())] if hasattr(v, "__dict__") else []
        return items + [(False, n, getattr(v, n, None)) for n in _slot_names(type(v))]
    return None


_EXACT_TYPES = (int, bool, str, type(None))  # == is identity of value for these (not float)


def snapshot(v, depth=0):
    t = type(v)
    if t is float:
        return (t, v.hex())  # 0.0 and -0.0 differ (== calls them equal); every NaN is 'nan'
    if t in SIMPLE_VALUE_TYPES:
        return (t, v)
    if (t is tuple or t is list) and len(v) <= MAX_ITEMS and all(type(x) in _EXACT_TYPES for x in v):
        # A module's kernel_size, stride or padding: compared as it is (a tuple of its items),
        # without a snapshot per element (this runs for every guarded attribute on every call).
        return (t, tuple(v))
    if isinstance(v, torch.Tensor):
        # Not a baked-in value (a trace reads it as an input each call), but which tensor it is:
        # a function that stores a new one there (OBJ.last = y) has a side effect.
        return (t, Identity(v))
    if depth >= MAX_DEPTH or isinstance(v, torch.nn.Module) or not worth_guarding(v):
        return (t, id(v))
    if isinstance(v, (set, frozenset)):
        if len(v) > MAX_ITEMS or not all(type(x) in SIMPLE_VALUE_TYPES for x in v):
            return (t, id(v), len(v))
        return (t, frozenset(snapshot(x) for x in v))
    items = contents(v)
    if len(items) > MAX_ITEMS:
        return (t, id(v), len(items))
    return (t, tuple((k, snapshot(x, depth + 1)) for _, k, x in items))


def same_value(a, b):
    """Whether two values are one for a trace, by the snapshot rules (a float's bits, a
    tensor's or a module's identity, a container's contents); a Snapshot by equality."""
    return a == b if type(a) is Snapshot else snapshot(a) == snapshot(b)


# Snapshots taken during the current call, by path: the guards of every cached variant of a
# function read the same objects, and nothing can change them between two variants' checks.
_taken = {}


def new_call():
    """Forgets the snapshots of the previous call (called once per compiled call)."""
    if _taken:
        _taken.clear()


class SnapshotGetter:
    """Reads the snapshot of the object `getter()` returns (None's when it is gone)."""
    __slots__ = ("getter", "path")

    def __init__(self, getter):
        self.getter = getter
        self.path = (getter.kind, id(getter.root), getter.key, getter.names)

    def __call__(self):
        snap = _taken.get(self.path)
        if snap is None:
            try:
                v = self.getter()
            except (AttributeError, KeyError, IndexError, ValueError):
                v = None
            snap = _taken[self.path] = Snapshot(snapshot(v))
        return snap


class TensorIdentityGetter:
    """Which tensor a plain (non-buffer) tensor attribute holds, as a guard value (by identity)."""
    __slots__ = ("getter",)

    def __init__(self, getter):
        self.getter = getter

    def __call__(self):
        try:
            return Snapshot((Identity(self.getter()),))
        except (AttributeError, KeyError, IndexError, ValueError):
            return Snapshot((None,))
