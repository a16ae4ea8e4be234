"""kiln's knobs: read from KILN_* environment variables at import, changeable at run time.

    kiln.config.get("num_threads"); kiln.config.set("num_threads", 2)
    with kiln.config.patch(disable=1): ...
"""

import contextlib

from . import _C


def knobs():
    """Every knob: name, env, value, default, doc."""
    return _C.knobs()


def get(name):
    return _C.knob(name)


def _truthy(v):
    return bool(v) and v not in ("0", "false", "False", "off")


class _Flags:
    """The knobs the per-call path reads, cached as Python bools (refreshed by `set`): reading
    them through _C on every call cost about a microsecond."""

    def __init__(self):
        self.refresh()

    def refresh(self):
        self.disable = _truthy(_C.knob("disable"))
        self.check = _truthy(_C.knob("check"))
        self.background = _truthy(_C.knob("background"))


flags = _Flags()


def set(name, value):  # noqa: A001 - mirrors the knob table's verb
    from . import _background
    _background.wait()  # a compile running in the background reads knobs (Note [Background compiles])
    _C.set_knob(name, str(int(value)) if isinstance(value, bool) else str(value))
    flags.refresh()


@contextlib.contextmanager
def patch(**values):
    """Temporarily sets knobs (for tests)."""
    old = {k: get(k) for k in values}
    try:
        for k, v in values.items():
            set(k, v)
        yield
    finally:
        for k, v in old.items():
            set(k, v)
