"""The whole deterministic sampling chain x_T -> x0 as one differentiable function, optionally
checkpointed per step.

Paper: Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (gradient checkpointing);
used as DITTO (Novack et al. 2024, "DITTO: Diffusion Inference-Time T-Optimization") uses it to
optimise the initial noise through every sampling step.

Rule: without checkpointing autograd keeps every step's network activations until backward, so
activation memory grows linearly with the step count. With ``checkpoint=True`` each step runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the forward keeps only the step's
input latent, and backward recomputes that one step's activations when it reaches it — memory holds
the K per-step latents plus one step's activations, for one extra forward per step (the recomputed
forwards count on the model's NFE counter, since they are real network evaluations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as run_checkpointed


def sample_chain(model, x_T: torch.Tensor, cond: Any, times: Sequence[float], *,
                 checkpoint: bool = False) -> torch.Tensor:
    """Run ``model.step`` along `times` (len(times) - 1 steps) from x_T [B, ...] to x0 [B, ...].

    Args:
        model: a `Denoiser` (its `step` is the deterministic sampler).
        x_T: the initial noise; mark it ``requires_grad`` to differentiate the chain with respect to it.
        cond: what ``model.condition`` returned.
        times: the schedule (``model.timesteps(steps)``), noisiest first.
        checkpoint: recompute each step's activations in backward instead of keeping them (only
            matters when gradients flow; under ``torch.no_grad`` it is a plain loop).
    Returns:
        The clean samples [B, ...], differentiable with respect to x_T when gradients are enabled.
    """
    x = x_T
    recompute = checkpoint and torch.is_grad_enabled()
    for t, t_next in zip(times[:-1], times[1:]):
        if recompute:
            x = run_checkpointed(model.step, x, t, t_next, cond, use_reentrant=False)  # keeps only x: [B, ...]
        else:
            x = model.step(x, t, t_next, cond)  # [B, ...]
    return x


__all__ = ["sample_chain"]
