"""Flattening of call arguments and results into leaves plus a hashable structure spec.

Tensors and plain values inside tuples, lists, dicts and dataclasses (transformers'
ModelOutput among them) become leaves; the spec records the containers (types, lengths, dict
keys, field names) so a guard can compare call shapes with one `==`.
"""

import dataclasses

_CONTAINERS = (tuple, list, dict)
_DATACLASS = {}  # type -> its field names when it is a dataclass rebuilt by cls(**fields), else None


def _dataclass_fields(t):
    names = _DATACLASS.get(t, False)
    if names is False:
        names = None
        if dataclasses.is_dataclass(t):
            fields = dataclasses.fields(t)
            if all(f.init for f in fields):
                names = tuple(f.name for f in fields)
        _DATACLASS[t] = names
    return names


def flatten(obj, leaves):
    """Appends the leaves of `obj` to `leaves`; returns the structure spec."""
    t = type(obj)
    if t is tuple or t is list:
        return (t, tuple(flatten(x, leaves) for x in obj))
    if isinstance(obj, tuple) and hasattr(t, "_fields"):  # namedtuple
        return (t, tuple(flatten(x, leaves) for x in obj), True)
    if isinstance(obj, tuple) and hasattr(t, "n_fields"):  # structseq (torch.return_types.*)
        return (t, tuple(flatten(x, leaves) for x in obj), False)
    if t is dict:
        keys = tuple(obj.keys())
        return (dict, keys, tuple(flatten(obj[k], leaves) for k in keys))
    names = _dataclass_fields(t)
    if names is not None:
        return (t, names, tuple(flatten(getattr(obj, n), leaves) for n in names), "dataclass")
    leaves.append(obj)
    return None


def unflatten(spec, leaves, pos=0):
    """Rebuilds the object of `spec` from `leaves` starting at `pos`; returns (obj, next pos)."""
    if spec is None:
        return leaves[pos], pos + 1
    if spec[0] is dict or len(spec) == 4:
        out = {}
        for k, s in zip(spec[1], spec[2]):
            out[k], pos = unflatten(s, leaves, pos)
        return (out if spec[0] is dict else spec[0](**out)), pos
    items = []
    for s in spec[1]:
        v, pos = unflatten(s, leaves, pos)
        items.append(v)
    if len(spec) == 3:
        return (spec[0](*items) if spec[2] else spec[0](items)), pos
    return spec[0](items), pos
