"""kiln.compile on an nn.Module: a Module that runs the original's forward compiled.

The wrapper owns the original as `_orig_mod`, forwards attribute reads to it, and keeps its
state_dict keys unprefixed, so it can be used, saved and loaded like the original.
"""

import torch

from ._compile import CompiledFunction


class CompiledModule(torch.nn.Module):
    def __init__(self, mod, **options):
        super().__init__()
        self._orig_mod = mod
        self._kiln = CompiledFunction(mod.forward, module=mod, **options)

    def forward(self, *args, **kwargs):
        return self._kiln(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)

    # Containers (nn.Sequential, nn.ModuleList) stay indexable: model[0] is the original's.
    def __getitem__(self, index):
        return self._orig_mod[index]

    def __len__(self):
        return len(self._orig_mod)

    def __iter__(self):
        return iter(self._orig_mod)

    def state_dict(self, *args, **kwargs):
        return self._orig_mod.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self._orig_mod.load_state_dict(*args, **kwargs)

    def __repr__(self):
        return f"kiln.CompiledModule({self._orig_mod!r})"
