"""ponder's attention inside a transformers model: the plan travels with the forward, the backend is a name.

Rule: `route(model, NAME)` registers ``"ponder"`` as a transformers attention implementation (the
`AttentionInterface` registry) and switches the model to it. Every forward ponder runs then passes
one `PlanContext` as the keyword ``ponder_plan``; transformers hands its keyword arguments down to
each layer's attention call, where `ponder_attention` looks up that layer's shared-prefix keys and
values (by the module's ``layer_idx``) and calls `ponder.kernels.attention.attend` with the plan and
the named backend. A forward without a plan (transformers' own ``generate``, training) runs
transformers' sdpa over the mask transformers built, so the model stays usable outside ponder.

``"sdpa"`` (the default) leaves the model as it is: transformers' sdpa with a dense 4D mask, the
prompt's keys copied into every row — today's path. A model whose attention does not route
through the registry (no ``_supports_attention_backend``, or layers without a ``layer_idx``) falls
back to it with a warning that says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ponder.errors import ConfigError
from ponder.kernels.attention import BACKENDS, DEFAULT_BACKEND, AttentionPlan, attend, get_backend
from ponder.kernels.attention.recycled import RecycledAttention

IMPLEMENTATION = "ponder"  # the name ponder's attention is registered under in transformers

_registered = False


@dataclass(frozen=True, eq=False)
class PlanContext:
    """What every layer's attention call of one forward needs beyond its own query / key / value.

    prefix_keys / prefix_values: per layer, the one [1, Hkv, P, D] copy of the shared prefix (empty
    lists when plan.prefix_length is 0).
    """

    plan: AttentionPlan
    backend: str
    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]
    recycled: RecycledAttention | None = None  # Recycled Attention's state (replaces the backend), or None

    def prefix(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.plan.prefix_length == 0:
            return None, None
        return self.prefix_keys[layer], self.prefix_values[layer]


def ponder_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """The attention function transformers calls per layer: [B, T, Hq, Dv] output and no weights.

    query [B, Hq, T, D], key / value [B, Hkv, S, D] (what the cache's update returned: the rows'
    own suffix); the shared prefix and the plan come from ``kwargs["ponder_plan"]``.
    """
    context = kwargs.pop("ponder_plan", None)
    if context is None:  # a forward ponder did not plan: transformers' sdpa over its own mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    prefix_key, prefix_value = context.prefix(module.layer_idx)
    if context.recycled is not None:
        out = context.recycled.attend(module.layer_idx, query, key, value, context.plan, prefix_key, prefix_value,
                                      scale=scaling)  # [B, Hq, T, Dv]
    else:
        out = attend(query, key, value, context.plan, prefix_key, prefix_value, backend=context.backend,
                     scale=scaling)  # [B, Hq, T, Dv]
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"ponder"`` with transformers' attention and mask registries (once per process).

    The mask registry gets transformers' own sdpa mask, so forwards without a plan get the mask
    sdpa expects; planned forwards pass no mask and ignore whatever is built.
    """
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, ponder_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    _registered = True


def check_name(name: object) -> str:
    """`name` when it is an attention backend ponder knows, else one ConfigError listing them."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ConfigError(f"attention {name!r} is not allowed; use one of {', '.join(BACKENDS)} "
                          f"(default {DEFAULT_BACKEND})")
    return name


def _not_routable(model) -> str | None:
    """Why `model`'s attention cannot route through transformers' registry (None: it can)."""
    if not getattr(type(model), "_supports_attention_backend", False):
        return f"{type(model).__name__} does not dispatch its attention through transformers' AttentionInterface"
    attentions = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    if not attentions or any(not isinstance(getattr(m, "layer_idx", None), int) for m in attentions):
        return f"{type(model).__name__}'s attention layers carry no layer_idx to find their cached prefix by"
    return None


def routable(model) -> None:
    """ConfigError unless `model`'s attention can route through transformers' registry."""
    why = _not_routable(model)
    if why is not None:
        raise ConfigError(f"ponder's attention cannot run in this model: {why}")


def route(model, name: str, device: torch.device) -> str:
    """Switch transformers `model` to ponder's attention with backend `name`; returns the backend used.

    "sdpa" changes nothing. Another name must be able to run on `device` (else ConfigError naming
    the backends that can); a model that cannot route through the registry stays on sdpa, with a
    warning that says why.
    """
    check_name(name)
    if name == DEFAULT_BACKEND:
        return name
    reason = get_backend(name).unavailable_reason(device)
    if reason is not None:
        from ponder.kernels.attention import available_backends

        raise ConfigError(f"attention {name!r} cannot run here: {reason}; available on {device}: "
                          f"{', '.join(available_backends(device))}")
    why = _not_routable(model)
    if why is not None:
        warnings.warn(f"attention {name!r} is not used: {why}; the model runs transformers' sdpa instead",
                      stacklevel=3)
        return DEFAULT_BACKEND
    switch(model)
    return name


def switch(model) -> None:
    """Make transformers `model` run ponder's attention (registering it first)."""
    register()
    model.set_attn_implementation(IMPLEMENTATION)


__all__ = ["IMPLEMENTATION", "PlanContext", "check_name", "ponder_attention", "register", "routable", "route",
           "switch"]
