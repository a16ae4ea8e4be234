"""Compiled functions: the per-call fast path (flatten, guard, run) and capture on a miss."""

import functools
import os
import re
import sys
import threading
import time
import types
import warnings

import torch

from . import _C, _accuracy, _argument_changes, _autograd, _background, _backward_capture, _counters, _cuda, _dynamic
from . import _segments, _size_int
from .config import flags as _flags
from ._flatten import flatten, unflatten
from ._snapshot import MAX_DEPTH as _MAX_DEPTH
from ._snapshot import MAX_ITEMS as _MAX_ITEMS
from ._snapshot import MODULE_KEYS as _MODULE_KEYS
from ._snapshot import SIMPLE_VALUE_TYPES as _SIMPLE_VALUE_TYPES
from ._snapshot import Snapshot, SnapshotGetter, TensorIdentityGetter, class_attributes, worth_guarding
from ._snapshot import contents as _contents
from ._snapshot import new_call as _new_snapshot_call
from ._snapshot import same_value
from ._trace import CaptureFailed, trace


def _log(stage, text):
    if _C.log_enabled(stage):
        print(f"[kiln {stage}] {text}", file=sys.stderr)


_NO_DEFAULT = object()


class _PathGetter:
    """Reads one value the function needs besides its arguments: a root (an object, a closure
    cell's contents, or dict[key]) followed by attribute names. Calling it is the exact Python
    semantics; _C.LeafGetters reads whole lists of them with dict lookups (see leaf_getters.cpp).
    `default`: returned when the dict entry or the last attribute is missing."""

    __slots__ = ("kind", "root", "key", "names", "default")
    OBJ, CELL, ITEM = 0, 1, 2

    def __init__(self, kind, root, key=None, names=(), default=_NO_DEFAULT):
        self.kind, self.root, self.key, self.names, self.default = kind, root, key, tuple(names), default

    def then(self, names, default=_NO_DEFAULT):
        """This path followed by more attribute names."""
        return _PathGetter(self.kind, self.root, self.key, self.names + tuple(names), default)

    def __call__(self):
        if self.kind == self.OBJ:
            obj = self.root
        elif self.kind == self.CELL:
            obj = self.root.cell_contents
        elif self.default is not _NO_DEFAULT and not self.names:
            return self.root.get(self.key, self.default)
        else:
            obj = self.root[self.key]
        for i, n in enumerate(self.names):
            if self.default is not _NO_DEFAULT and i == len(self.names) - 1:
                return getattr(obj, n, self.default)
            obj = getattr(obj, n)
        return obj


def _leaf_reader(getters):
    """A function returning [g() for g in getters]: the leading _PathGetters in C++, the
    container snapshots after them (see _plain_value_sources) in Python."""
    if not getters:
        return None
    k = next((i for i, g in enumerate(getters) if type(g) is not _PathGetter), len(getters))
    if not hasattr(_C, "LeafGetters") or any(type(g) is _PathGetter for g in getters[k:]):
        return lambda: [g() for g in getters]
    reader = _C.LeafGetters(torch.nn.Module.__getattr__)
    for g in getters[:k]:
        reader.add(g.kind, g.root, g.key, list(g.names), g)
    slow = getters[k:]
    return reader.read if not slow else (lambda: reader.read() + [g() for g in slow])


def _attr_path_getter(root, path):
    return _PathGetter(_PathGetter.OBJ, root, names=path.split("."))


def _code_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def _failure(native, default):
    """Why a compiled call returned False (a fallback op's data-dependent shape, a kernel's
    division by zero), as its runner says."""
    why = native.last_failure() if hasattr(native, "last_failure") else ""
    return why or default


def _owner_and_function(fn):
    """(object whose attributes the function reads, the plain function): a bound method's
    object and function; a callable object and its class's __call__; a function and itself."""
    owner = getattr(fn, "__self__", None)
    raw = getattr(fn, "__func__", fn)
    if owner is None and not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, torch.nn.Module)) \
            and isinstance(getattr(type(fn), "__call__", None), types.FunctionType):
        owner, raw = fn, type(fn).__call__
    return owner, raw


class _NestedGetter:
    """A tensor inside a container or plain object: base() followed by item and attribute steps.
    Gone (a cache dict emptied): _MISSING, which fails the tensor guard of its leaf."""
    __slots__ = ("base", "steps")

    def __init__(self, base, steps):
        self.base, self.steps = base, steps

    def __call__(self):
        try:
            v = self.base()
            for is_item, k in self.steps:
                v = v[k] if is_item else getattr(v, k)
            return v
        except (KeyError, IndexError, AttributeError, TypeError):
            return _MISSING


def _nested_tensors(v, base, out, steps=(), depth=0):
    """Adds the tensors inside container or plain object `v` (read by `base()`) to `out`, to the
    depth and breadth the snapshot guards cover (timm's LeViT caches a bias tensor in a dict)."""
    items = _contents(v) if depth < _MAX_DEPTH else None
    if items is None or len(items) > _MAX_ITEMS:
        return
    for is_item, k, x in items:
        if isinstance(x, torch.Tensor):
            out.setdefault(id(x), (_NestedGetter(base, steps + ((is_item, k),)), x))
        elif type(x) not in _SIMPLE_VALUE_TYPES:
            _nested_tensors(x, base, out, steps + ((is_item, k),), depth + 1)


def _is_argument_module(x):
    """A module passed as an argument, guarded as that very object: the guard compares by
    identity, then ==, so a class defining its own == is not one."""
    return isinstance(x, torch.nn.Module) and type(x).__eq__ is object.__eq__


def _argument_modules(leaves):
    out = []
    for x in leaves:
        if _is_argument_module(x) and all(x is not m for m in out):
            out.append(x)
    return out


def _captured_candidates(fn, module, arg_modules=()):
    """Tensors the function can reach besides its arguments: id -> (getter, tensor).
    arg_modules: modules passed as arguments (`train_step(model, batch)`): their parameters and
    buffers, read from the module object (the guards pin the argument to that object)."""
    out = {}

    def add_module(mod, base_getter):
        for name, t in list(mod.named_parameters(remove_duplicate=False)) + list(mod.named_buffers(remove_duplicate=False)):
            getter = _attr_path_getter(mod, name) if base_getter is None else base_getter.then(name.split("."))
            out.setdefault(id(t), (getter, t))
        for sub_name, sub in mod.named_modules(remove_duplicate=False):
            for k, v in list(vars(sub).items()):
                if k.startswith("__") or k in _MODULE_KEYS:
                    continue
                parts = tuple((f"{sub_name}.{k}" if sub_name else k).split("."))
                base = _attr_path_getter(mod, ".".join(parts)) if base_getter is None else base_getter.then(parts)
                if isinstance(v, torch.Tensor):  # a plain tensor attribute (not a buffer): RoPE tables
                    out.setdefault(id(v), (base, v))
                elif worth_guarding(v):
                    _nested_tensors(v, base, out)

    if module is not None:
        add_module(module, None)
    for m in arg_modules:
        if m is not module:
            add_module(m, _PathGetter(_PathGetter.OBJ, m))
    owner, raw = _owner_and_function(fn)  # a bound method's object: its tensors are reachable too
    if isinstance(owner, torch.nn.Module) and owner is not module:
        add_module(owner, _PathGetter(_PathGetter.OBJ, owner))
    elif owner is not None and owner is not module and hasattr(owner, "__dict__"):
        for k, v in list(vars(owner).items()):
            if isinstance(v, torch.Tensor):
                out.setdefault(id(v), (_PathGetter(_PathGetter.OBJ, owner, names=(k,)), v))
            else:
                _nested_tensors(v, _PathGetter(_PathGetter.OBJ, owner, names=(k,)), out)
    code = getattr(raw, "__code__", None)
    for i, cell in enumerate(getattr(raw, "__closure__", None) or ()):
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if isinstance(v, torch.Tensor):
            out.setdefault(id(v), (_PathGetter(_PathGetter.CELL, cell), v))
        elif isinstance(v, torch.nn.Module):
            add_module(v, _PathGetter(_PathGetter.CELL, cell))
        else:
            _nested_tensors(v, _PathGetter(_PathGetter.CELL, cell), out)
    g = getattr(raw, "__globals__", None)
    if g is not None and code is not None:
        for name in _code_names(code):
            v = g.get(name)
            if isinstance(v, torch.Tensor):
                out.setdefault(id(v), (_PathGetter(_PathGetter.ITEM, g, name), v))
            elif isinstance(v, torch.nn.Module):
                add_module(v, _PathGetter(_PathGetter.ITEM, g, name))
            elif v is not None:
                _nested_tensors(v, _PathGetter(_PathGetter.ITEM, g, name), out)
    return out


_MISSING = object()


def _plain_value_sources(fn, module, arg_modules=()):
    """Getters of the plain values (numbers, bools, strings, None, dtypes) the function reads
    besides its arguments: referenced globals, closure cells, the attributes of a bound method's
    object, and the attributes of the module and of every module those reach (self.eps,
    self.training of a submodule, ...).

    The trace bakes such values into the graph as constants, so each one is guarded by value
    like a scalar argument; without this a changed global or attribute reused a program built
    for the old value and returned wrong results. Containers and plain objects among them
    (`CFG["scale"]`, `self.config.eps`) are guarded by a snapshot of their contents (see
    _snapshot.py); those getters come last, once per object."""
    out, snaps, seen = [], [], set()
    owner, raw = _owner_and_function(fn)
    code = getattr(raw, "__code__", None)
    code_names = _code_names(code) if code is not None else set()

    def add_snapshot(value, getter):
        if id(value) not in seen:
            seen.add(id(value))
            snaps.append(SnapshotGetter(getter))

    def add_value(v, getter):
        if type(v) in _SIMPLE_VALUE_TYPES:
            out.append(getter)
        elif worth_guarding(v):
            add_snapshot(v, getter)

    def add_class(cls, stop=None):
        # `self.scale` with `scale = 2.0` in the class body reads the class's attribute
        if id(cls) not in seen:
            seen.add(id(cls))
            for owner_cls, k, v in class_attributes(cls, stop):
                add_value(v, _PathGetter(_PathGetter.OBJ, owner_cls, names=(k,), default=_MISSING))

    def add_module(mod, base):
        for sub_name, sub in mod.named_modules(remove_duplicate=False):
            for k, v in list(vars(sub).items()):
                if k.startswith("__"):
                    continue
                parts = tuple((f"{sub_name}.{k}" if sub_name else k).split("."))
                if type(v) in _SIMPLE_VALUE_TYPES:
                    out.append(base.then(parts))  # `training` among them
                elif k in _MODULE_KEYS:  # the hook and parameter dicts
                    continue
                elif isinstance(v, torch.Tensor):
                    # which tensor the attribute holds: a forward that stores a new one
                    # (self.attn = p) changes state a compiled call would not change
                    if id(v) not in seen:
                        seen.add(id(v))
                        snaps.append(TensorIdentityGetter(base.then(parts)))
                elif worth_guarding(v):
                    add_snapshot(v, base.then(parts))
            add_class(type(sub), torch.nn.Module)

    def add(value, getter):
        if isinstance(value, torch.nn.Module):
            add_module(value, getter)
        elif isinstance(value, type):
            add_class(value)
        elif isinstance(value, types.ModuleType):
            # `hp.SCALE`: the attributes of a Python module the code names
            for name in sorted(code_names):
                if not name.startswith("__") and name in vars(value):
                    add_value(vars(value)[name], getter.then((name,), default=_MISSING))
        else:
            add_value(value, getter)

    if module is not None:
        add_module(module, _PathGetter(_PathGetter.OBJ, module))
    for m in arg_modules:  # modules passed as arguments: their .training, .eps, ...
        if m is not module and m is not owner:
            add_module(m, _PathGetter(_PathGetter.OBJ, m))
    if isinstance(owner, torch.nn.Module) and owner is not module:
        add_module(owner, _PathGetter(_PathGetter.OBJ, owner))
    elif owner is not None and owner is not module:
        add_value(owner, _PathGetter(_PathGetter.OBJ, owner))  # its attributes, by snapshot
        add_class(type(owner))
    for cell in getattr(raw, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if v is not module:
            add(v, _PathGetter(_PathGetter.CELL, cell))
    g = getattr(raw, "__globals__", None)
    if g is not None and code is not None:
        for name in sorted(code_names):
            if name in g and g[name] is not module:
                add(g[name], _PathGetter(_PathGetter.ITEM, g, name, default=_MISSING))
    return out + snaps


def _source_key(get):
    if isinstance(get, _NestedGetter):  # a tensor inside a container: its base's key and the path
        return ("nested", _source_key(get.base), tuple(get.steps))
    inner = getattr(get, "getter", get)
    if not isinstance(inner, _PathGetter):
        return (type(get).__name__, id(get))
    return (type(get).__name__, inner.kind, id(inner.root), inner.key, inner.names)


def _python_side_effects(sources, before, sources_after):
    """A CaptureFailed when the traced call changed a plain value it can read besides its
    arguments (`self.calls += 1`, `self.last = y`, a cache dict filled, a list appended to): a
    compiled call runs no Python, so it would not repeat the change, and the next call would
    find the state eager leaves behind differ from kiln's. Such a call stays eager; once the
    state stops changing (a cache filled on the first call), the next capture compiles."""
    _new_snapshot_call()
    known = set(map(_source_key, sources))
    new = [k for k in map(_source_key, sources_after) if k not in known]
    if new:
        return CaptureFailed(f"the function sets new attributes on state it reads besides its arguments "
                             f"({'.'.join(str(n) for n in new[0][4]) or new[0][3]}); a compiled call would not set them")
    for get, old in zip(sources, before):
        if not same_value(get(), old):
            where = getattr(get, "getter", get)
            path = ".".join(str(n) for n in getattr(where, "names", ())) or str(getattr(where, "key", "") or "")
            return CaptureFailed(f"the function changes Python state it reads besides its arguments "
                                 f"({path or type(old).__name__}); a compiled call would not change it again")
    return None


def _segment_result(result, outs, full, args, kwargs):
    (out_specs, mutations), result_spec, replay = result
    for leaf, s in mutations:
        full[leaf].copy_(outs[s[1]][s[2]])
    vals = []
    for s in out_specs:
        vals.append(outs[s[1]][s[2]] if s[0] == "seg" else full[s[1]] if s[0] == "input" else s[1])
    if replay is not None:  # (Replay, where its values start): Note [Argument containers]
        replay[0].apply(args, kwargs, vals[replay[1]:])
    return unflatten(result_spec, vals)[0]


def _byte_span(t):
    """[lo, hi) in bytes around t.data_ptr() that t's elements occupy; None when it has none."""
    if t.numel() == 0:
        return None
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        (lo, hi) = (lo + min(0, (size - 1) * stride), hi + max(0, (size - 1) * stride))
    item = t.element_size()
    return lo * item, (hi + 1) * item


def _build_guards(leaves, grad, mutated=()):
    gs = _C.GuardSet()
    gs.set_leaf_count(len(leaves))
    gs.set_grad_mode(grad)
    # Aliasing: the trace read leaves that were one object as one value, so later calls must
    # pass one object there too; a leaf written in place must not be another leaf later.
    tensors = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
    for a_i, i in enumerate(tensors):
        for j in tensors[a_i + 1:]:
            if leaves[i] is leaves[j]:
                gs.add_identity(i, j, True)
            elif i in mutated or j in mutated:
                gs.add_identity(i, j, False)
                si, sj = _byte_span(leaves[i]), _byte_span(leaves[j])
                if si and sj:
                    gs.add_disjoint(i, j, *si, *sj)
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            gs.add_tensor(i, type(leaf), leaf.dtype, str(leaf.device), list(leaf.shape), list(leaf.stride()),
                          leaf.requires_grad)
        elif type(leaf) in _SIMPLE_VALUE_TYPES or type(leaf) is Snapshot or _is_argument_module(leaf):
            gs.add_value(i, type(leaf), leaf)  # a module argument: that very object (identity first)
        else:
            gs.add_value(i, type(leaf), None, type_only=True)
    return gs


def _outcome(build):
    """(build(), None), or (None, the exception it raised): a background compile's result,
    handed to the calling thread."""
    try:
        return build(), None
    except Exception as e:  # noqa: BLE001 - _install decides, as a foreground compile would
        return None, e


class _Entry:
    """One guarded specialisation: compiled (program set), eager (reason set), or a placeholder
    whose program compiles in the background (pending set)."""

    def __init__(self, guards, getters, program=None, out_specs=None, result_spec=None, reason=None,
                 failure=None, fallbacks=None):
        self.failure = failure
        if failure is not None:  # see Tracer.fail: its traceback would hold the call's tensors
            failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        self.guards = guards
        self.getters = getters
        self.read_getters = _leaf_reader(getters)
        self.program = program
        self.fallbacks = fallbacks or []
        self.tree = None  # set for a tree of segments (graph breaks)
        self.training = None  # the _C.TrainingProgram of a compiled training step (native runs it)
        self.mutations = []  # (leaf index, output position): new values written back after a call
        self.silent = set()  # leaves among them written without a version bump (Tracer.silent_updates)
        self.data_dependent_failures = 0  # calls whose fallback op returned another shape
        self.replay = None  # _argument_changes.Replay: container changes written after each call
        self.replay_start = 0  # where its values start among the outputs (after the result's)
        self.pending = None  # a background compile's Future (Note [Background compiles])
        self.install = None  # installs its outcome: the compiled entry in this one's place
        # _dynamic.CaptureRecord: a static CPU entry's capture, to pair with a later one at other
        # sizes; a dynamic entry's, the capture that made it (a capture at a size its guards leave
        # out is checked against it).
        self.capture = None
        self.nargs = None  # positional arguments, where the entry is on the C++ fast path
        self.dynamic = None  # _C.DynamicProgram: one program for every size (program: its first instance)
        if program is None:
            self.native = None
        elif hasattr(_C, "DynamicProgram") and isinstance(program, _C.DynamicProgram):
            self.dynamic, self.program = program, program.first
            self.native = _C.DynamicEntry(guards, program)
        elif getattr(program, "target", "cpu") == "cuda":
            self.native = _cuda.CudaEntry(guards, program)
        else:
            self.native = _C.Entry(guards, program, list(self.fallbacks))
        self.out_specs = out_specs
        self.result_spec = result_spec
        self.reason = reason
        # Fast path for the common `return tensor`.
        self.single = result_spec is None and out_specs == [("graph", 0)]


class CompiledFunction:
    """What kiln.compile returns for a function (and installs as a module's forward)."""

    def __init__(self, fn, backend="kiln", fullgraph=False, dynamic=None, module=None, background=None):
        if backend not in ("kiln", "eager"):
            raise ValueError(f"kiln.compile: unknown backend {backend!r} (expected 'kiln' or 'eager')")
        self._fn = fn
        self._module = module
        self._backend = backend
        self._fullgraph = fullgraph
        self._dynamic = dynamic  # False: never a dynamic program (_dynamic.py)
        self._entries = {}       # structure spec -> [_Entry]
        self._entry_count = 0
        self._eager_only = None  # reason, once the cache limit is hit
        self._compiles = 0
        # Note [Background compiles]: None follows the knob (KILN_BACKGROUND).
        self._background = _flags.background if background is None else bool(background)
        self._pending_entries = 0  # placeholders whose compile has not been swapped in
        self._swap_lock = threading.Lock()
        self._last_entry = None  # the compiled entry that served the last call (KILN_CHECK)
        # C++ fast path for calls with positional tensors only (see FastPath in bind_cpu.cpp).
        self._fast = _C.FastPath(torch.Tensor, torch.is_grad_enabled, torch.get_default_dtype, _FAST_MISS) \
            if hasattr(_C, "FastPath") else (lambda *a: _FAST_MISS)
        functools.update_wrapper(self, fn)
        if not hasattr(self, "__name__"):  # a callable object: no __name__ to copy
            self.__name__ = type(fn).__name__

    @staticmethod
    def _state():
        """Global state that changes results, appended to every call's leaves and guarded (the
        plain values the function reads are guarded through each entry's getters)."""
        return [torch.get_default_dtype()]

    # -- the per-call path ------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if not kwargs and not _flags.disable and not _flags.check:
            out = self._fast(*args)
            if out is not _FAST_MISS:
                return out
        if _flags.check:
            return _accuracy.checked_call(self, args, kwargs)
        return self._call(*args, **kwargs)

    def _call(self, *args, **kwargs):
        if self._backend == "eager" or self._eager_only is not None or _flags.disable:
            _counters.record_eager(self._eager_only or "kiln is disabled (KILN_DISABLE=1 or backend='eager')")
            return self._fn(*args, **kwargs)
        if not kwargs and all(type(a) is _Tensor for a in args):
            # The common call f(t1, t2, ...): its leaves and spec without walking containers.
            leaves = list(args)
            spec = _TENSOR_ARGS_SPECS.get(len(args))
            if spec is None:
                spec = _TENSOR_ARGS_SPECS[len(args)] = flatten((args, {}), [])
        else:
            leaves = []
            spec = flatten((args, kwargs), leaves)
        grad = torch.is_grad_enabled()
        state = [torch.get_default_dtype()]
        if self._pending_entries:
            self._swap_ready_entries()
        _new_snapshot_call()
        for entry in self._entries.get(spec, ()):
            full = leaves + entry.read_getters() + state if entry.getters else leaves + state
            if entry.tree is not None:
                out = entry.tree.run(full, grad)
                if out is None:
                    continue
                if out is _segments.DEEP_MISS:
                    return self._miss(args, kwargs, leaves, spec, grad, state, tree_entry=entry)
                if out is False:
                    _counters.record_eager(_failure(entry.tree.failed, "a compiled segment failed"))
                    return self._fn(*args, **kwargs)
                _counters.bump("cache_hits")
                outs, leaf = out
                return _segment_result(leaf.result, outs, full, args, kwargs)
            if entry.native is None:
                if entry.guards.check(full, grad):
                    if entry.pending is not None:
                        _counters.bump("eager_calls_while_compiling")
                    else:
                        _counters.record_eager(entry.reason)
                    return self._fn(*args, **kwargs)
                continue
            if entry.training is not None:
                entry.native.replay = (self._fn, args, kwargs)  # for a double backward, if one comes
            out = entry.native(full, grad)
            if out is None:
                continue
            self._last_entry = entry
            if out is False:
                # A kernel met an integer division by zero, or a fallback op raised: eager redoes
                # the call and raises torch's own error (if any).
                why = _failure(entry.native, "a compiled kernel or fallback op failed")
                _counters.record_eager(why)
                if entry.native.failed_on_data_dependent_shape():  # _C.Entry and CudaEntry both say
                    self._data_dependent_failure(entry, why)
                return self._fn(*args, **kwargs)
            _counters._counts["cache_hits"] += 1
            if entry.single:
                return out[0]
            for leaf, pos in entry.mutations:
                # in-place ops on arguments/buffers, as eager does (batch norm's running
                # statistics without a version bump, as eager's kernel writes them)
                (full[leaf].data if leaf in entry.silent else full[leaf]).copy_(out[pos])
            return self._result(entry, out, full, args, kwargs)
        return self._miss(args, kwargs, leaves, spec, grad, state)

    _DATA_DEPENDENT_LIMIT = 3

    def _data_dependent_failure(self, entry, why):
        """A fallback op's result had another shape than at capture (x[mask] with another
        count): the call ran the program up to it, then eagerly. After a few such calls this
        specialisation runs eagerly at once instead of paying for both."""
        entry.data_dependent_failures += 1
        if entry.data_dependent_failures < self._DATA_DEPENDENT_LIMIT:
            return
        entry.native = None
        entry.reason = f"{why}; after {self._DATA_DEPENDENT_LIMIT} such calls it runs eagerly for these guards"
        if hasattr(self._fast, "clear"):
            self._fast.clear()  # the fast path holds the compiled entry

    @staticmethod
    def _result(entry, out, full, args, kwargs):
        vals = [out[v] if kind == "graph" else full[v] if kind == "input" else v for kind, v in entry.out_specs]
        if entry.replay is not None:  # Note [Argument containers]
            entry.replay.apply(args, kwargs, vals[entry.replay_start:])
        return unflatten(entry.result_spec, vals)[0]

    # -- capture ----------------------------------------------------------------------------
    def _miss(self, args, kwargs, leaves, spec, grad, state, tree_entry=None):
        limit = int(_C.knob("cache_limit") or 8)
        if self._entry_count >= limit:
            self._eager_only = f"more than {limit} variants (KILN_CACHE_LIMIT); running eagerly"
            if hasattr(self._fast, "clear"):
                self._fast.clear()  # eager-only means every call, also those a variant covers
            warnings.warn(f"kiln: {self.__name__} recompiled {limit} times; it runs eagerly from now on. "
                          "Raise KILN_CACHE_LIMIT or make its argument shapes/values stable.", stacklevel=3)
            _counters.record_eager(self._eager_only)
            return self._fn(*args, **kwargs)
        if self._entry_count > 0:
            _counters.bump("recompiles")
            _log("recompiles", f"{self.__name__}: new variant #{self._entry_count + 1}")
        arg_count = len(leaves)
        arg_modules = _argument_modules(leaves)
        candidates = _captured_candidates(self._fn, self._module, arg_modules)
        # Plain values read besides the arguments, read before the function runs (the values
        # the trace bakes in), guarded after the captured tensors.
        value_sources = _plain_value_sources(self._fn, self._module, arg_modules)
        values = [get() for get in value_sources]
        trace_leaves = list(leaves)
        self._capture_started = time.perf_counter()  # KILN_LOG=perf
        # The argument containers as the call finds them (Note [Argument containers]).
        before = _argument_changes.ContainerSnapshot(args, kwargs)
        _counters.bump("captures")
        try:
            result, tracer = trace(self._fn, args, kwargs, trace_leaves, candidates)
        except CaptureFailed as e:
            # Raised while setting up (e.g. a sparse argument), before the function ran.
            _counters.record_failure(e)
            return self._eager_entry(args, kwargs, leaves + state, spec, grad, [], e.reason, e)
        getters = [src for src in tracer.captured] + value_sources
        full = trace_leaves + values + state
        failure = tracer.failure
        if failure is None:
            failure = _python_side_effects(value_sources, values,
                                           _plain_value_sources(self._fn, self._module, arg_modules))
        training = grad and any(isinstance(t, torch.Tensor) and t.requires_grad for t in trace_leaves)
        if failure is None and any(not isinstance(x, torch.Tensor) and type(x) not in _SIMPLE_VALUE_TYPES
                                   and not _is_argument_module(x) for x in leaves):
            bad = next(type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)
                       and type(x) not in _SIMPLE_VALUE_TYPES and not _is_argument_module(x))
            failure = CaptureFailed(f"an argument of type {bad} cannot be guarded")
        replay = None
        if failure is None:
            replay = _argument_changes.plan(before, args, kwargs)
            if isinstance(replay, CaptureFailed):
                failure, replay = replay, None
            elif replay is not None and len(tracer.segments) > 1 and training:
                failure = CaptureFailed(
                    f"the function changes its argument {replay.describe()}; in a training step with graph breaks "
                    f"kiln does not replay such changes (each segment's backward would need the stored tensors)")
        out_specs = result_spec = None
        if failure is None:
            res_leaves = []
            result_spec = flatten(result, res_leaves)
            try:
                replay_leaves = replay.take_leaves() if replay else []
                out_specs = tracer.outputs(res_leaves + replay_leaves, arg_count)
                mutations = tracer.mutation_outputs()
                tracer.prune_flows()
            except CaptureFailed as e:
                failure = e
        if failure is not None:
            _counters.record_failure(failure)
            _log("breaks", f"{self.__name__}: {failure.reason} at {failure.location}")
            self._add_entry(spec, _Entry(_build_guards(full, grad), getters, reason=failure.reason,
                                         failure=failure))
            return result
        if len(tracer.segments) > 1:
            return self._add_path(spec, tracer, full, grad, getters, (out_specs, mutations),
                                  (result_spec, (replay, len(res_leaves)) if replay is not None else None), result,
                                  tree_entry, training)
        # One segment: its outputs are the result's tensors and the mutated leaves' new values.
        seg = tracer.segments[0]
        seg.builder.set_outputs(seg.needed)
        out_specs = [("graph", seg.needed.index(s[2])) if s[0] == "seg" else s for s in out_specs]
        mutations = [(leaf, seg.needed.index(src[2])) for leaf, src in mutations]
        # Lets lowering write a slice assignment into the argument itself (a KV cache update)
        # instead of producing a new tensor the size of the argument and copying it back.
        out_leaf = [_C.FRESH_OUTPUT if v in seg.fresh else -1 for v in seg.needed]
        for leaf, pos in mutations:
            out_leaf[pos] = leaf
        seg.builder.set_output_leaves(out_leaf)
        if training:
            tensor_of = {}
            # Tensors put into argument containers are outputs too, with gradients flowing
            # back through them like the result's (Note [Argument containers]).
            for t, s in zip(res_leaves + replay_leaves, out_specs):
                if s[0] == "graph":
                    tensor_of.setdefault(seg.needed[s[1]], t)
            joint = _backward_capture.capture_joint(tracer, seg, tensor_of, len(full))
            if isinstance(joint, CaptureFailed):
                _counters.record_failure(joint)
                _log("breaks", f"{self.__name__}: {joint.reason} at {joint.location}")
                self._add_entry(spec, _Entry(_build_guards(full, grad), getters, reason=joint.reason, failure=joint))
                return result
            if joint is not None:
                return self._compile_training(spec, tracer, seg, joint, full, grad, getters, out_specs, mutations,
                                              result_spec, result, replay, len(res_leaves))
        _log("graph", f"{self.__name__}:\n{tracer.builder.print()}")
        self._compile_started = time.perf_counter()
        # One directory per compiled variant, named before _compiles counts it: the extras
        # written after compiling used to go to the next variant's (missing) directory.
        debug_dir = self._debug_dir()
        guards = _build_guards(full, grad, set(tracer.mutations))
        record, base, template, dyn_guards = self._dynamic_pairing(spec, tracer, full, getters, out_specs,
                                                                   result_spec, replay, mutations, grad)
        reused = self._dynamic_program_for(spec, tracer, record) if template is None else None
        if reused is not None:  # the dynamic program's code serves this size too: no compile
            entry = _Entry(guards, getters, reused, out_specs, result_spec)
            self._finish_entry(spec, entry, tracer, mutations, debug_dir, reused.loop_ir, len(leaves))
            return result

        def build():
            if template is not None:
                try:
                    return _C.compile_dynamic(template, debug_dir)
                except _C.Unsupported as e:
                    _log("dynamic", f"{self.__name__}: stays specialised: {e}")
            if _cuda.is_cuda_trace(tracer):
                # Tensors on a CUDA device compile for it (NVRTC; fallback ops run eagerly
                # between its kernels); mixed devices or a missing driver raise Unsupported and
                # run eagerly.
                return _cuda.compile_cuda_entry(tracer, debug_dir=debug_dir)
            if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tracer.leaves):
                raise _C.Unsupported("kiln compiles CPU and CUDA tensors; these live on "
                                     f"{sorted({str(t.device) for t in tracer.leaves if isinstance(t, torch.Tensor)})}")
            return _C.compile_graph(tracer.builder, debug_dir)

        def install(program):
            dynamic = isinstance(program, _C.DynamicProgram)
            shown = program.first if dynamic else program
            if shown.dump_error:
                warnings.warn(shown.dump_error)
            self._compiles += 1
            entry = _Entry(dyn_guards if dynamic else guards, getters, program, out_specs, result_spec,
                           fallbacks=tracer.fallbacks)
            if replay is not None:
                entry.replay, entry.replay_start, entry.single = replay, len(res_leaves), False
                _log("guards", f"{self.__name__}: replays changes to {replay.describe()} after each call")
            entry.capture = record
            if dynamic:
                _counters.bump("dynamic_compiles")
                _log("dynamic", f"{self.__name__}: one program for every size: {program.describe}")
            self._finish_entry(spec, entry, tracer, mutations, debug_dir, shown.loop_ir, len(leaves))
            if dynamic:
                self._retire(spec, base, entry)

        placeholder = self._compile(spec, guards, getters, build, install, placeholder_guards=dyn_guards)
        if placeholder is not None and template is None:
            placeholder.capture = record  # a capture at other sizes may pair with it while it compiles
        return result

    # -- dynamic programs (Note [Dynamic sizes] in runtime/dynamic_program.cpp) -------
    def _dynamic_pairing(self, spec, tracer, full, getters, out_specs, result_spec, replay, mutations, grad,
                         joint=None):
        """(record, base, template, guards): this capture's record (kept by its static entry
        for a later pairing, or None), and when it pairs with an earlier capture at other
        sizes, that capture's entry, their graph template and the symbolic guards. `joint`:
        a training step's joint_key (its builder then holds the joint graph)."""
        if self._dynamic is False:
            return None, None, None, None
        why = _dynamic.ineligible(tracer, replay, mutations)
        if why is not None:
            if self._entries.get(spec):
                _log("dynamic", f"{self.__name__}: specialises on sizes: {why}")
            return None, None, None, None
        record = _dynamic.CaptureRecord(tracer.builder, full, [_source_key(g) for g in getters], out_specs,
                                        result_spec, [d for d in tracer.decided if d != _size_int.SIZES],
                                        tracer.constraints, joint)
        for base in reversed(self._entries.get(spec, ())):
            if getattr(base, "capture", None) is None or base.dynamic is not None:
                continue
            why, ints = base.capture.pairs_with(record)
            if why is not None:
                continue
            try:
                template = _C.GraphTemplate(base.capture.builder, tracer.builder, ints)
            except _C.Unsupported as e:
                _log("dynamic", f"{self.__name__}: specialises on sizes: {e}")
                continue
            if not _dynamic.symbolic_leaves(template):
                continue
            marked = _dynamic.static_marks_hold(template, full)
            if marked is not None:
                _log("dynamic", f"{self.__name__}: specialises on sizes: {marked}")
                continue
            symbols = _dynamic.symbol_range(template, record.constraints)
            if symbols is None:
                _log("dynamic", f"{self.__name__}: specialises on sizes: its size comparisons do not fit one range")
                continue
            mutated = set(tracer.mutations)
            apart = _dynamic.written_apart(template, full, mutated)
            if apart is not None:
                _log("dynamic", f"{self.__name__}: specialises on sizes: {apart}")
                continue
            return (record, base, template,
                    _dynamic.guards(_build_guards(full, grad, mutated), template, symbols))
        return record, None, None, None

    def _dynamic_program_for(self, spec, tracer, record):
        """A dynamic program's instance for this capture (at a size its symbolic guards leave
        out, such as one below a relation guard's range) when the capture's lowering matches
        that program's kernel template, else None."""
        if record is None:
            return None
        for e in self._entries.get(spec, ()):
            if e.dynamic is None or e.capture.pairs_with(record)[0] is not None:
                continue
            program = e.dynamic.program_for(tracer.builder)
            if program is not None:
                _log("dynamic", f"{self.__name__}: this size runs the dynamic program (its graph here is the same)")
                return program
        return None

    def _retire(self, spec, base, entry):
        """Drops the static entry a dynamic one replaces (it serves that size too) and puts the
        dynamic entry in its place."""
        es = self._entries.get(spec, [])
        if base in es and entry in es:
            es.remove(entry)
            es[es.index(base)] = entry
            self._entry_count -= 1
            if hasattr(self._fast, "clear"):
                self._fast.clear()
                for sp, entries in self._entries.items():
                    for e in entries:
                        if getattr(e, "nargs", None) is not None:
                            self._maybe_fast(sp, e, e.nargs)

    # -- compiling, in the foreground or in the background ---------------------------------
    def _compile(self, spec, guards, getters, build, install, what="", placeholder_guards=None):
        """Runs build() (passes and code generation), then install(program), which adds the
        compiled entry; a build that fails adds an eager entry with the reason instead. With
        background compiles, build runs on kiln's compile thread and a placeholder entry runs
        the calls its guards match eagerly until the program is swapped in (Note [Background
        compiles] in _background.py)."""
        if not self._background:
            self._install(spec, guards, getters, install, _outcome(build), what)
            return None
        # A placeholder for a dynamic program runs every size eagerly until it is ready.
        entry = _Entry(placeholder_guards or guards, getters, reason="compiling in the background")
        entry.pending = _background.submit(lambda: _outcome(build))
        entry.install = functools.partial(self._install, spec, guards, getters, install, what=what)
        self._add_entry(spec, entry)
        self._pending_entries += 1
        return entry

    def _install(self, spec, guards, getters, install, outcome, what=""):
        program, err = outcome
        if err is None:
            install(program)
        elif isinstance(err, _C.Unsupported):
            failure = CaptureFailed(str(err), location="(lowering)")
            _counters.record_failure(failure)
            self._add_entry(spec, _Entry(guards, getters, reason=str(err), failure=failure))
        elif isinstance(err, (_C.InternalError, RuntimeError)):
            warnings.warn(f"kiln: compiling {what}{self.__name__} failed; it runs eagerly for these inputs: {err}")
            _counters.record_failure(CaptureFailed(f"kiln internal error: {err}"))
            self._add_entry(spec, _Entry(guards, getters, reason=f"internal error: {err}"))
        else:
            raise err

    def _swap_ready_entries(self):
        """Installs every background compile that has finished, each where its placeholder was."""
        with self._swap_lock:
            for es in list(self._entries.values()):
                for e in [e for e in es if e.pending is not None and e.pending.done()]:
                    at = es.index(e)
                    es.pop(at)
                    self._entry_count -= 1
                    self._pending_entries -= 1
                    e.install(e.pending.result())
                    e.pending = None
                    if len(es) > at + 1:
                        es.insert(at, es.pop())

    # -- training (Note [Training capture] in _backward_capture.py) --------------------------
    def _compile_training(self, spec, tracer, seg, joint, full, grad, getters, out_specs, mutations, result_spec,
                          result, replay=None, replay_start=0):
        """Partitions and compiles the joint graph; the entry runs it inside autograd."""
        self._compile_started = time.perf_counter()
        seg.builder.set_outputs(seg.needed + joint["grad_vids"])
        _log("graph", f"{self.__name__} (joint forward + backward):\n{seg.builder.print()}")
        debug_dir = self._debug_dir()
        guards = _build_guards(full, grad, set(tracer.mutations))
        record = base = template = dyn_guards = None
        if not _cuda.is_cuda_trace(tracer) and hasattr(_C, "compile_dynamic_training"):
            record, base, template, dyn_guards = self._dynamic_pairing(
                spec, tracer, full, getters, out_specs, result_spec, replay, mutations, grad,
                joint=_dynamic.joint_key(joint, len(seg.needed)))

        def build():
            if template is not None:
                try:
                    return _C.compile_dynamic_training(template, len(seg.needed), joint["tangents"],
                                                       joint["backward_start"], debug_dir=debug_dir)
                except _C.Unsupported as e:
                    _log("dynamic", f"{self.__name__}: stays specialised: {e}")
            if _cuda.is_cuda_trace(tracer):
                devices = {t.device for t in tracer.leaves if isinstance(t, torch.Tensor)}
                if len(devices) != 1:
                    raise _C.Unsupported("kiln: a CUDA program needs every tensor on one CUDA device, got "
                                         f"{sorted(map(str, devices))}")
                return _cuda.compile_cuda_training(seg.builder, len(seg.needed), joint, next(iter(devices)),
                                                   tracer.fallbacks, debug_dir)
            if not hasattr(_C, "compile_training"):
                raise _C.Unsupported("kiln was built without the CPU backend (KILN_CPU=OFF)")
            tp = _C.compile_training(seg.builder, len(seg.needed), joint["tangents"], joint["backward_start"],
                                     debug_dir=debug_dir)
            return (tp, _C.Entry(guards, tp.forward, list(tracer.fallbacks), lazy_outputs=True),
                    _C.Entry(_C.GuardSet(), tp.backward, list(tracer.fallbacks), lazy_outputs=True))

        def install(programs):
            dynamic = isinstance(programs, getattr(_C, "DynamicTraining", ()))
            self._compiles += 1
            if dynamic:
                tp = programs.first
                entry = _Entry(dyn_guards, getters, None, out_specs, result_spec, fallbacks=tracer.fallbacks)
                entry.program = tp.forward
                entry.training = _autograd.TrainingPrograms(tp, tp.forward, tp.backward)
                entry.native = _autograd.DynamicTrainingRunner(dyn_guards, programs, tracer.fallbacks,
                                                               joint["differentiable"], joint["grad_leaves"],
                                                               joint["output_meta"])
                entry.dynamic = programs
                _counters.bump("dynamic_compiles")
                _log("dynamic", f"{self.__name__}: one training step for every size: {programs.describe}")
            else:
                tp, forward, backward = programs
                entry = _Entry(guards, getters, None, out_specs, result_spec, fallbacks=tracer.fallbacks)
                entry.program = forward.program if isinstance(forward, _C.Entry) else forward
                entry.training = _autograd.TrainingPrograms(
                    tp, entry.program, backward.program if isinstance(backward, _C.Entry) else backward)
                entry.native = _autograd.TrainingRunner(guards, tp, forward, backward, joint["differentiable"],
                                                        joint["grad_leaves"], joint["output_meta"],
                                                        entry.training.backward.graph)
            entry.capture = record
            entry.native.out_specs = out_specs
            # Changes to argument containers are writes to the arguments too: an eager replay of
            # the call (double backward) would make them again.
            entry.native.has_mutations = bool(mutations) or replay is not None
            if replay is not None:
                entry.replay, entry.replay_start, entry.single = replay, replay_start, False
            self._finish_entry(spec, entry, tracer, mutations, debug_dir,
                               f"forward:\n{tp.forward.loop_ir}\nbackward:\n{tp.backward.loop_ir}")
            if dynamic:
                self._retire(spec, base, entry)

        placeholder = self._compile(spec, guards, getters, build, install, what="the training step of ",
                                    placeholder_guards=dyn_guards)
        if placeholder is not None and template is None:
            placeholder.capture = record  # a capture at other sizes may pair with it while it compiles
        return result

    def _finish_entry(self, spec, entry, tracer, mutations, debug_dir, loop_ir, nargs=None):
        """Adds a compiled entry: its write-backs, counters, logs and debug artifacts; with
        `nargs`, registers it with the C++ fast path where its calls allow."""
        entry.mutations = mutations
        entry.silent = set(tracer.silent_updates)
        entry.single = entry.single and not mutations
        if nargs is not None:
            entry.nargs = nargs
            self._maybe_fast(spec, entry, nargs)
        for fb in tracer.fallbacks:
            _counters.record_fallback_op(str(fb))
        self._add_entry(spec, entry)
        _log("guards", f"{self.__name__}:\n  " + "\n  ".join(entry.guards.describe()))
        if _C.log_enabled("perf"):
            _log("perf", self._perf_report(entry))
        _log("kernels", f"{self.__name__}:\n{loop_ir}")
        self._write_debug_extras(entry, debug_dir)

    def _add_path(self, spec, tracer, full, grad, getters, out_specs, result_spec, result, tree_entry,
                  training=False):
        """Merges a trace with graph breaks into the tree of its specialisation (a new tree when
        none matches) and compiles the segments that changed."""
        breaks = sum(len(seg.reads) for seg in tracer.segments)
        _counters.bump("graph_breaks", breaks)
        _log("breaks", f"{self.__name__}: {breaks} value(s) read into Python; {len(tracer.segments)} segments")
        entry = tree_entry
        if entry is None:
            entry = _Entry(_build_guards(full, grad, set(tracer.mutations)), getters)
            devices = {t.device for t in tracer.leaves if isinstance(t, torch.Tensor)}
            device = next(iter(devices)) if len(devices) == 1 and next(iter(devices)).type == "cuda" else None
            entry.tree = _segments.Tree(entry.guards, len(full), grad, device, training)
            self._add_entry(spec, entry)
        else:
            self._entry_count += 1  # a new path counts as a variant for the cache limit
        try:
            dirty = entry.tree.merge(tracer, out_specs, result_spec)
            for node in dirty:
                entry.tree.compile(node, self._debug_dir())
                self._compiles += 1
        except (_segments.NondeterministicTrace, _C.Unsupported, _C.InternalError, RuntimeError) as e:
            # The tree cannot be trusted for this specialisation: run it eagerly from now on.
            reason = f"graph-break segments could not be compiled: {e}"
            entry.tree = None
            entry.native = None
            entry.reason = reason
            entry.failure = CaptureFailed(reason, location="(segments)")
            _counters.record_failure(entry.failure)
            return result
        for fb in tracer.fallbacks:
            _counters.record_fallback_op(str(fb))
        return result

    def _perf_report(self, entry):
        """Where this compile's time went: the capturing call (the function run eagerly under
        the tracer, and autograd's backward for a training step), then each program's passes
        and LLVM stages (Program.timings)."""
        now = time.perf_counter()
        capture = (self._compile_started - self._capture_started) * 1e3
        compile_ms = (now - self._compile_started) * 1e3
        lines = [f"{self.__name__}: capture {capture:.1f} ms (the call run under the tracer), "
                 f"compile {compile_ms:.1f} ms"]
        programs = [("", entry.program)] if entry.training is None else \
            [("forward ", entry.training.forward), ("backward ", entry.training.backward)]
        for label, program in programs:
            lines += [f"  {label}{t}" for t in getattr(program, "timings", [])]
        return "\n".join(lines)

    def _maybe_fast(self, spec, entry, nargs):
        """Registers `entry` with the C++ fast path when the call is positional tensors only and
        the result is one tensor or a flat tuple of the graph's outputs in order."""
        if not hasattr(self._fast, "add") or entry.getters or entry.mutations or \
                not isinstance(entry.native, (_C.Entry, getattr(_C, "DynamicEntry", _C.Entry))):
            return
        if spec != flatten((tuple(range(nargs)), {}), []):  # not a purely positional call
            return
        if entry.single:
            self._fast.add(nargs, entry.native, False)
        elif entry.result_spec == (tuple, (None,) * len(entry.out_specs)) and \
                entry.out_specs == [("graph", j) for j in range(len(entry.out_specs))]:
            self._fast.add(nargs, entry.native, True)

    def _eager_entry(self, args, kwargs, full, spec, grad, getters, reason, failure=None):
        _counters.record_eager(reason)
        self._add_entry(spec, _Entry(_build_guards(full, grad), getters, reason=reason,
                                     failure=failure or CaptureFailed(reason)))
        return self._fn(*args, **kwargs)

    def _add_entry(self, spec, entry):
        self._entries.setdefault(spec, []).append(entry)
        self._entry_count += 1

    def _debug_dir(self):
        root = _C.knob("debug_dir")
        if not root:
            return ""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", getattr(self._fn, "__qualname__", "fn"))
        return os.path.join(root, f"{name}_{self._compiles}")

    def _write_debug_extras(self, entry, d):
        if not d:
            return
        try:
            with open(os.path.join(d, "guards.txt"), "w") as f:
                f.write("\n".join(entry.guards.describe()) + "\n")
            with open(os.path.join(d, "timings.txt"), "w") as f:
                f.write("\n".join(entry.program.timings) + "\n")
        except OSError as e:
            warnings.warn(f"kiln: cannot write KILN_DEBUG_DIR artifacts: {e}")

    # -- inspection -------------------------------------------------------------------------
    def compiled_programs(self):
        return [p for p, _ in self.compiled_programs_with_phase()]

    def compiled_programs_with_phase(self):
        """(program, "forward" | "backward") of every compiled variant, oldest first: a training
        step's backward program follows its forward."""
        out = []
        for es in self._entries.values():
            for e in es:
                if e.program is not None:
                    out.append((e.program, "forward"))
                    if e.training is not None:
                        out.append((e.training.backward, "backward"))
                elif e.tree is not None:
                    out.extend((p, "forward") for p in e.tree.programs())
                    out.extend((p, "backward") for p in e.tree.backward_programs())
        return out

    def entries(self):
        return [e for es in self._entries.values() for e in es]


_Tensor = torch.Tensor
_FAST_MISS = object()
_TENSOR_ARGS_SPECS = {}  # number of tensor arguments -> the spec flatten() gives such a call
