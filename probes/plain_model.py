"""A plain Hugging Face view of a TransformerBridge's model, sharing its weights.

TransformerBridge wraps every submodule of the HF model it boots in a bridge component with hook
points. Each hook point runs Python on every forward, which on a small CPU costs about half the
throughput of the bare model. Bulk extraction only needs a few residual-stream tensors, so it runs
on this twin instead: the same module tree with every bridge wrapper replaced by the module it
wraps. Parameters and buffers are the same tensor objects (no copy, no extra memory); only the
module objects are new, so hooks added to the twin never touch the bridge and vice versa.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _wrapped(module: nn.Module) -> nn.Module | None:
    inner = module.__dict__.get("_modules", {}).get("_original_component")
    return inner if isinstance(inner, nn.Module) else None


def plain_twin(
    model: nn.Module, *, config: Any | None = None
) -> tuple[nn.Module, dict[int, nn.Module]]:
    """Return the unwrapped twin of ``model`` and a map id(original module) -> twin module.

    ``config``, when given, replaces the ``config`` attribute of every twin module that shared
    the model's config, so the twin can use another attention implementation than the bridge.
    """
    mapping: dict[int, nn.Module] = {}
    old_config = getattr(model, "config", None)

    def clone(module: nn.Module) -> nn.Module:
        while (inner := _wrapped(module)) is not None:
            module = inner
        if id(module) in mapping:
            return mapping[id(module)]
        twin = copy.copy(module)
        for name in _HOOK_DICTS:
            if name in module.__dict__:
                object.__setattr__(twin, name, OrderedDict())
        mapping[id(module)] = twin
        children = OrderedDict(
            (name, None if child is None else clone(child))
            for name, child in module._modules.items()
        )
        object.__setattr__(twin, "_modules", children)
        if (
            config is not None
            and old_config is not None
            and twin.__dict__.get("config") is old_config
        ):
            object.__setattr__(twin, "config", config)
        return twin

    return clone(model), mapping
