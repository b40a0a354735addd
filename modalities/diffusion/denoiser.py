"""The generic diffusion `Denoiser`: a model family's network call driven by a shared deterministic sampler.

A modality (images today, audio next) subclasses `DiffusionDenoiser` and supplies only `to_outputs`
(decoded tensors -> PIL images, waveforms, ...); a model family (class-conditional UNet, DiT, SD,
...) is a small `Family` object that supplies its conditioning, its one network call and its tensor
decode. Everything in between — classifier-free guidance, reading the prediction as (x0, eps), the
deterministic step, re-noising, NFE counting — lives here once (the maths: `samplers`).

Rule (classifier-free guidance, Ho & Salimans 2022): with scale w > 1 the prediction is
``u + w (c - u)`` from the conditional (c) and unconditional (u) rows of one batched call; each row
of that call is one NFE.

Gradients: nothing here disables autograd. The caller decides — search strategies wrap their loops
in ``torch.no_grad()``; noise optimisation marks x_T ``requires_grad`` and backpropagates through
`sample` (or `ponder.search.scaling.sample_chain.sample_chain`) and `decode_tensor`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ponder.errors import ConfigError, check_int
from ponder.modalities.diffusion.samplers import Sampler, forward_process, renoise_scales, split_prediction


@dataclass
class Condition:
    """One prompt's conditioning; it broadcasts to any batch size at call time.

    Tensors hold one row each (``[1, ...]``); with classifier-free guidance `uncond` holds the
    unconditional row (null class, or the empty prompt's embeddings)."""

    prompt: Any
    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None
    label: int | None = None  # class index for class-conditional models
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Family(Protocol):
    """A model family: its conditioning, its network call and its decode; nothing about sampling."""

    name: str  # what `info()` records ("unet", "dit", "sd", ...)
    net: torch.nn.Module  # the denoising network
    cond_first: bool  # classifier-free guidance batch order: conditional rows first (DiT) or second (SD)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        """One row of conditioning for `prompt` (InputError if the family cannot take it); with
        `guided` also the unconditional row."""
        ...

    def predict(self, x: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """One network call: x [B, C, ...], timestep [B], cond rows [B, ...] -> prediction [B, C, ...]."""
        ...

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, C, ...] -> the modality's output tensor (e.g. pixels in [-1, 1], unclamped)."""
        ...


def _rows(tensors: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """Every one-row conditioning tensor [1, ...] broadcast to b rows [b, ...] (a view, no copy)."""
    return {k: v.expand(b, *v.shape[1:]) for k, v in tensors.items()}


class DiffusionDenoiser:
    """`ponder.search.core.Denoiser` over a `Family` and a deterministic `Sampler`.

    Attributes:
        name: what results call the model.
        family: the `Family` object (conditioning + network call + decode).
        sampler: the `Sampler` (time grid + forward process).
        guidance_scale: classifier-free guidance scale (1 = off).
        default_steps: steps used when a strategy is not told how many.
        nfe: network evaluations so far, counted per batch row (a classifier-free-guidance pair
            counts 2; a checkpointed step recomputed during backward counts again); strategies read
            the difference around their work.
        shape: one row of x (latent channels, then the latent's spatial / temporal sizes).
    """

    modality = "diffusion"

    def __init__(self, family: Family, sampler: Sampler, *, name: str, shape: tuple[int, ...],
                 guidance_scale: float = 1.0, default_steps: int = 20):
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale < 1.0:
            raise ConfigError(f"guidance_scale must be a number >= 1 (1 = no guidance), got {guidance_scale!r}")
        check_int("steps", default_steps, what="default denoising steps")
        self.family = family
        self.sampler = sampler
        self.name = name
        self.shape = tuple(shape)
        self.guidance_scale = float(guidance_scale)
        self.default_steps = default_steps
        self.nfe = 0
        param = next(p for p in family.net.parameters() if p.is_floating_point())
        self.dtype, self.device = param.dtype, param.device  # x_T is drawn in float32 and cast to these

    # -- the protocol ------------------------------------------------------------------------------

    def condition(self, prompt: Any, n: int = 1) -> Condition:
        """Conditioning for `prompt` (what the family takes: a class, text); it broadcasts to any batch."""
        return self.family.condition(prompt, self.guidance_scale > 1)

    def timesteps(self, steps: int) -> list[float]:
        """steps + 1 times, noisiest first; `step` between consecutive ones costs one NFE per row."""
        check_int("steps", steps, what="denoising steps")
        return self.sampler.times(steps)

    def noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One initial x_T per generator: exactly what diffusers' ``latents=`` takes (standard normal,
        drawn row by row as `randn_tensor` does with a list of generators). -> [B, *shape]"""
        rows = [torch.randn((1, *self.shape), generator=g, device=g.device, dtype=torch.float32)
                for g in generators]
        return torch.cat(rows).to(self.device, self.dtype)

    def network(self, x_in: torch.Tensor, t: float, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """One batched network call at time t; counts one NFE per row. x_in: [B, ...] -> [B, ...]"""
        b = x_in.shape[0]
        timestep = torch.full((b,), self.sampler.model_time(t), dtype=self.sampler.timestep_dtype,
                              device=x_in.device)  # [B]
        self.nfe += b
        return self.family.predict(x_in, timestep, cond)

    def guided_prediction(self, x_in: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        """The (guided) prediction at t for x_in [B, ...]; CFG batches cond and uncond rows in one call."""
        b = x_in.shape[0]
        if cond.uncond is None or self.guidance_scale == 1.0:
            return self.network(x_in, t, _rows(cond.cond, b))
        first, second = (cond.cond, cond.uncond) if self.family.cond_first else (cond.uncond, cond.cond)
        first, second = _rows(first, b), _rows(second, b)
        both = {k: torch.cat([first[k], second[k]]) for k in first}  # [2B, ...]
        out = self.network(torch.cat([x_in, x_in]), t, both)  # [2B, ...]
        head, tail = out[:b], out[b:]
        c_pred, u_pred = (head, tail) if self.family.cond_first else (tail, head)
        return u_pred + self.guidance_scale * (c_pred - u_pred)

    def split(self, x_t: torch.Tensor, t: float, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from one network call at t: the only place predictions are interpreted."""
        a, s = self.sampler.alpha_sigma(t)
        if s == 0:  # the clean end: nothing to predict (and no network call)
            return x_t / a, torch.zeros_like(x_t)
        pred = self.guided_prediction(x_t, t, cond)  # [B, ...]
        x0, eps = split_prediction(self.sampler.prediction, pred, x_t, a, s)
        config = self.sampler.scheduler.config
        if config.get("clip_sample"):  # as diffusers' DDIM: clip x0, keep eps
            bound = config.get("clip_sample_range", 1.0)
            x0 = x0.clamp(-bound, bound)
        return x0, eps

    def step(self, x_t: torch.Tensor, t: float, t_next: float, cond: Condition) -> torch.Tensor:
        """Deterministic step from t to t_next (any later time): x_t' = a(t') x0 + s(t') eps. One NFE per row."""
        x0, eps = self.split(x_t, t, cond)
        return forward_process(x0, eps, *self.sampler.alpha_sigma(t_next))

    def predict_x0(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        """The model's estimate of the clean sample from x_t (one NFE per row). -> [B, ...]"""
        return self.split(x_t, t, cond)[0]

    def renoise(self, x: torch.Tensor, t_from: float, t_to: float, noise: torch.Tensor) -> torch.Tensor:
        """Forward process from t_from to the noisier t_to with standard-normal `noise` [B, ...]:
        x_to = r x + sqrt(s_to^2 - r^2 s_from^2) noise, r = a_to / a_from."""
        ratio, std = renoise_scales(self.sampler, t_from, t_to)
        if std == 0.0 and ratio == 1.0:  # pure noise stays pure noise
            return x
        return ratio * x + std * noise

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, ...] -> the output tensor losses read (no clamping, no rounding; gradients pass)."""
        return self.family.decode_tensor(x0)

    def to_outputs(self, decoded: torch.Tensor) -> list:
        """Decoded tensors [B, ...] (detached) -> the modality's outputs; a modality overrides this."""
        return list(decoded)

    def decode(self, x0: torch.Tensor) -> list:
        """Clean latents [B, ...] -> outputs (one per row), via `decode_tensor` and `to_outputs`."""
        with torch.no_grad():  # outputs are files / images, never part of a gradient
            decoded = self.decode_tensor(x0.detach())
        return self.to_outputs(decoded)

    # -- conveniences ------------------------------------------------------------------------------

    def sample(self, x_T: torch.Tensor, cond: Condition, steps: int, *, checkpoint: bool = False) -> torch.Tensor:
        """Denoise x_T [B, ...] through `steps` deterministic steps to clean samples [B, ...]; with
        `checkpoint` each step's activations are recomputed in backward instead of kept."""
        from ponder.search.scaling.sample_chain import sample_chain

        return sample_chain(self, x_T, cond, self.timesteps(steps), checkpoint=checkpoint)

    def info(self) -> dict:
        """What results record about the model (JSON-serialisable)."""
        return {"model": self.name, "family": self.family.name, "sampler": self.sampler.name,
                "guidance_scale": self.guidance_scale, "default_steps": self.default_steps}


__all__ = ["Condition", "DiffusionDenoiser", "Family"]


def read_pipeline_index(folder, families, what: str) -> tuple[dict, str]:
    """``model_index.json`` of a diffusers pipeline folder and its ``_class_name``, which must be one of
    `families` (what this `what` denoiser supports); one ModelLoadError otherwise."""
    import json
    from pathlib import Path

    from ponder.errors import ModelLoadError

    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(f"{str(folder)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{index_path}: not valid JSON ({err})") from None
    kind = index.get("_class_name")
    if kind not in families:
        raise ModelLoadError(f"{str(folder)!r} holds a {kind or 'pipeline of unknown class'}; ponder's {what} "
                             f"denoiser supports {', '.join(sorted(families))}")
    return index, kind
