"""Shared diffusion code that image and audio diffusion both use; not a modality of its own.

* `samplers`: the deterministic samplers (DDIM, Euler, Euler-Karras, flow) over diffusers
  schedulers — the time grid, the forward process ``x_t = a(t) x0 + s(t) eps`` and reading a network
  output (epsilon, v, sample, flow) as (x0, eps).
* `denoiser`: `DiffusionDenoiser`, the generic `Denoiser` a modality subclasses, and the `Family`
  protocol a model family (UNet, DiT, SD, ...) implements with its conditioning and network call.
* `sample_chain` (from `ponder.search.scaling.sample_chain`, where DITTO reads it): the whole sampler x_T -> x0
  with optional gradient checkpointing per step.

Nothing here disables gradients: the caller decides whether they flow.
"""

from __future__ import annotations

from ponder.modalities.diffusion.denoiser import Condition, DiffusionDenoiser, Family
from ponder.modalities.diffusion.samplers import SAMPLERS, Sampler, make_sampler
from ponder.search.scaling.sample_chain import sample_chain

__all__ = ["SAMPLERS", "Condition", "DiffusionDenoiser", "Family", "Sampler", "make_sampler", "sample_chain"]
