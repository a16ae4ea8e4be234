"""kiln as a torch.compile backend: `torch.compile(fn, backend="kiln")`.

Dynamo captures the Python function into an FX GraphModule (handling Python control flow with
its own guards and graph breaks); kiln then compiles each GraphModule the same way it compiles
a user function: its first call runs under kiln's tracer, which feeds every ATen op of the FX
graph into the same GraphBuilder, and later calls run the fused kernels. Registered through the
standard `torch_dynamo_backends` entry point and, as a fallback, on `import kiln`.
"""

import sys

from ._compile import CompiledFunction


def kiln_backend(gm, example_inputs):
    """Dynamo backend entry: returns a callable equivalent to `gm`. Training works the same way
    as through kiln.compile: a call that needs gradients (Dynamo passes parameters as inputs
    that require grad) compiles its forward and its backward (Note [Training capture])."""
    # A lazily recompiled GraphModule writes its code attributes on its first call; kiln would
    # take that for a Python side effect of every call and run eagerly.
    if hasattr(gm, "real_recompile"):
        gm.real_recompile()
    return CompiledFunction(gm.forward, module=gm)


def register():
    """Makes backend="kiln" known to torch.compile without importing Dynamo at `import kiln`
    (importing torch._dynamo costs ~1.8 s, nearly all of kiln's import time). The installed
    entry point (pyproject.toml) lets Dynamo find kiln when it looks the name up; only where
    Dynamo is loaded already, or kiln runs from a checkout without its entry point, is the
    backend registered now."""
    if "torch._dynamo" not in sys.modules and _entry_point_installed():
        return
    try:
        from torch._dynamo import list_backends, register_backend
        if "kiln" not in list_backends(exclude_tags=()):
            register_backend(kiln_backend, name="kiln")
    except Exception:  # noqa: BLE001 - an older torch without Dynamo: the kiln.compile door stays
        pass


def _entry_point_installed():
    """Whether an installed kiln distribution declares the torch_dynamo_backends entry point."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        eps = distribution("kiln").entry_points
    except (ImportError, PackageNotFoundError):
        return False
    return any(ep.group == "torch_dynamo_backends" and ep.name == "kiln" for ep in eps)
