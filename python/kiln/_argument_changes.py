"""Changes a function makes to the Python containers it is given, replayed on compiled calls.

Note [Argument containers]: a compiled call runs no Python, so a change the traced call made to
a list, dict or dataclass among its arguments -- `cache["k"].append(k)`, `window.pop(0)`,
`state["h"] = h`, `cfg.last = y` -- would happen on the capturing call only; later calls would
leave the caller's containers as they were (a decode loop whose KV cache stops growing: a wrong
answer, silently). At capture kiln walks the containers reachable from the arguments before
and after the traced call (`ContainerSnapshot`, `plan`) and records each container whose contents
changed, with its new contents described by what the next call can rebuild:

  ("value", k)   the k-th replayed leaf: a tensor the program computes (one more output of the
                 program), an argument tensor, or a plain value (int, str, ...), which the
                 argument guards fix
  ("old", path)  a container or other object that was reachable before the call at `path`
                 (moved, or kept where it was)
  ("new", type, keys, items)   a container made by the call, rebuilt on every call

A compiled call then computes the new leaves and `Replay.apply` writes every recorded container
in place (`lst[:] = ...`, `d.clear(); d.update(...)`, `setattr`), after resolving all paths first,
so moves between containers see the state before the call, as eager's did. In a training step
the stored tensors are outputs of the step's autograd node like its result, so gradients flow
back through them. A function with graph breaks replays, after its last segment, the changes its
path made (the stored tensors are outputs of the segments that made them). A change kiln cannot
express (an object of another kind put into a container), or one in a training step with graph
breaks (each segment's backward would need the stored tensors), makes the capture fail with its
reason: that call and later ones with the same guards run eagerly, counted. Growing a list changes the argument's structure, so the next call
misses the cache and captures again (a new variant per length) -- never a stale result.

Containers walked: list, dict, tuple (and named tuples), dataclass instances -- exactly what
`_flatten.flatten` takes apart for the guards; anything else among the arguments already makes
the capture fail ("cannot be guarded").
"""

import torch

from ._flatten import _dataclass_fields
from ._trace import CaptureFailed

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _children(obj):
    """(key kind, key, child) of a walked container, or None for a leaf."""
    t = type(obj)
    if t is list or isinstance(obj, tuple):
        return [("i", i, x) for i, x in enumerate(obj)]
    if t is dict:
        return [("k", k, v) for k, v in obj.items()]
    if _dataclass_fields(t) is not None:
        names = list(vars(obj)) if hasattr(obj, "__dict__") else list(_dataclass_fields(t))
        return [("a", n, getattr(obj, n)) for n in names]
    return None


def _mutable(obj):
    return type(obj) is list or type(obj) is dict or (_dataclass_fields(type(obj)) is not None
                                                      and not isinstance(obj, tuple))


def _rebuildable(x):
    """A container the call made that a replay can make again: list, dict, tuple, named tuple,
    dataclass."""
    t = type(x)
    return t in (list, dict, tuple) or (isinstance(x, tuple) and hasattr(t, "_fields")) or \
        (_dataclass_fields(t) is not None and not isinstance(x, tuple))


def _describe(path):
    """arg1['k'][0].last, for reasons."""
    (kind, key), rest = path[0], path[1:]
    out = f"arg{key}" if kind == "arg" else str(key)
    for kind, key in rest:
        out += f".{key}" if kind == "a" else f"[{key!r}]"
    return out


class ContainerSnapshot:
    """The containers reachable from a call's arguments before the call: each one's path, and
    each mutable one's shallow contents (keys and the identity of every child)."""

    def __init__(self, args, kwargs):
        self.path_of = {}     # id -> path of every container (and every other object) reached
        self.contents = {}    # id -> ((kind, key, id(child)), ...) of each mutable container
        self.keep = []        # the objects themselves: their ids stay theirs while we compare
        for i, a in enumerate(args):
            self._walk(a, (("arg", i),))
        for k, v in kwargs.items():
            self._walk(v, (("kw", k),))

    def _walk(self, obj, path):
        if isinstance(obj, _PLAIN) or id(obj) in self.path_of:
            return
        self.path_of[id(obj)] = path
        self.keep.append(obj)
        kids = _children(obj)
        if kids is None:
            return
        if _mutable(obj):
            self.contents[id(obj)] = tuple((kind, key, id(x)) for kind, key, x in kids)
        for kind, key, x in kids:
            self._walk(x, path + ((kind, key),))

    @property
    def empty(self):
        return not self.contents


def plan(before, args, kwargs):
    """The Replay of what the traced call changed in its argument containers, None when it
    changed nothing, or a CaptureFailed naming a change kiln cannot replay."""
    if before.empty:
        return None
    changes = []   # (path, kind, keys, item specs)
    leaves = []    # the ("value", k) leaves, in order
    seen = set()

    def spec_of(x, where):
        if isinstance(x, torch.Tensor) or isinstance(x, _PLAIN):
            leaves.append(x)
            return ("value", len(leaves) - 1)
        if id(x) in before.path_of:
            visit(x)
            return ("old", before.path_of[id(x)])
        if not _rebuildable(x):
            raise CaptureFailed(f"the function puts an object of type {type(x).__name__} into its argument "
                                f"{_describe(where)}; kiln can replay only tensors, plain values and containers there")
        kids = _children(x)
        return ("new", type(x), tuple((kind, key) for kind, key, _ in kids),
                tuple(spec_of(c, where + ((kind, key),)) for kind, key, c in kids))

    def visit(obj):
        # Walks a container that existed before the call: records it if its contents changed,
        # and looks inside for changed containers it holds.
        if id(obj) in seen:
            return
        seen.add(id(obj))
        kids = _children(obj)
        if kids is None:
            return
        path = before.path_of[id(obj)]
        now = tuple((kind, key, id(x)) for kind, key, x in kids)
        if _mutable(obj) and now != before.contents.get(id(obj)):
            changes.append((path, type(obj), tuple((kind, key) for kind, key, _ in kids),
                            tuple(spec_of(x, path + ((kind, key),)) for kind, key, x in kids)))
        else:
            for kind, key, x in kids:
                if not isinstance(x, _PLAIN) and id(x) in before.path_of:
                    visit(x)

    try:
        for i, a in enumerate(args):
            if not isinstance(a, _PLAIN) and id(a) in before.path_of:
                visit(a)
        for k, v in kwargs.items():
            if not isinstance(v, _PLAIN) and id(v) in before.path_of:
                visit(v)
    except CaptureFailed as e:
        return e
    return Replay(changes, leaves) if changes else None


class Replay:
    """The container changes of one compiled entry, applied after each of its calls."""

    def __init__(self, changes, leaves):
        self.changes = changes
        self._leaves = leaves  # the capture's objects, until the caller maps them to outputs

    def take_leaves(self):
        """The capture's replayed leaves, in ("value", k) order, handed over once: the entry
        keeps only where each comes from, not the capture's tensors."""
        leaves, self._leaves = self._leaves, None
        return leaves

    def describe(self):
        return ", ".join(_describe(path) for path, *_ in self.changes)

    def apply(self, args, kwargs, values):
        """Writes every recorded container of this call's arguments; `values` are this call's
        replayed leaves in order."""
        cache = {}

        def resolve(path):
            if path not in cache:
                (kind, key), parent = path[-1], path[:-1]
                if not parent:
                    cache[path] = args[key] if kind == "arg" else kwargs[key]
                else:
                    p = resolve(parent)
                    cache[path] = getattr(p, key) if kind == "a" else p[key]
            return cache[path]

        def build(spec):
            if spec[0] == "value":
                return values[spec[1]]
            if spec[0] == "old":
                return resolve(spec[1])
            _, t, keys, items = spec
            built = [build(s) for s in items]
            if t is dict:
                return dict(zip((k for _, k in keys), built))
            if t is list or t is tuple:
                return t(built)
            if issubclass(t, tuple):  # a named tuple
                return t(*built)
            obj = t.__new__(t)
            for (_, name), v in zip(keys, built):
                object.__setattr__(obj, name, v)
            return obj

        # Everything is read before anything is written: a value moved from one container to
        # another is found where it was before the call.
        targets = [resolve(path) for path, *_ in self.changes]
        contents = [[build(s) for s in items] for _, _, _, items in self.changes]
        for obj, (_, t, keys, _), new in zip(targets, self.changes, contents):
            if t is list:
                obj[:] = new
            elif t is dict:
                obj.clear()
                obj.update(zip((k for _, k in keys), new))
            else:
                names = {k for _, k in keys}
                for name in [n for n in vars(obj) if n not in names] if hasattr(obj, "__dict__") else []:
                    delattr(obj, name)
                for (_, name), v in zip(keys, new):
                    setattr(obj, name, v)
