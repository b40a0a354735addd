"""Deterministic samplers over diffusers schedulers: the time grid and the forward process.

Papers: Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM, eta = 0); Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models" (deterministic Euler over the
sigmas, Karras spacing); Lipman et al. 2023 / Esser et al. 2024 (flow matching, rectified-flow Euler).

Rule: the state at time t is ``x_t = a(t) x0 + s(t) eps``. One network call at t gives (x0, eps) —
`split_prediction` reads an epsilon, v, sample or flow prediction — and a deterministic step to any
t' is ``x_t' = a(t') x0 + s(t') eps`` (`forward_process`). That is exactly DDIM (eta 0), diffusers'
Euler (its VE variable divided by sqrt(1 + sigma^2), which is what the network sees after
`scale_model_input`) and flow-matching Euler (a = 1 - t, s = t). Re-noising from t to a noisier t'
follows the forward process with the given noise (`renoise_scales`).

Every function here is plain tensor arithmetic, so gradients pass through whenever the caller lets
them (no ``torch.no_grad`` anywhere).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from ponder.errors import ConfigError, ModelLoadError

SAMPLERS = ("ddim", "euler", "euler-karras", "flow")
PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow")


class Sampler(Protocol):
    """A time grid over a diffusers scheduler config and the forward process at any time on it."""

    name: str  # one of SAMPLERS
    scheduler: Any  # the diffusers scheduler whose grid this is
    prediction: str  # what the network predicts: one of PREDICTIONS
    timestep_dtype: torch.dtype  # dtype of the timestep tensor the network is called with

    def times(self, steps: int) -> list[float]: ...  # steps + 1 times, noisiest first; the last is clean

    def alpha_sigma(self, t: float) -> tuple[float, float]: ...  # (a(t), s(t))

    def model_time(self, t: float) -> float: ...  # the timestep value the network is called with


class DDIM:
    """VP times = training timesteps (integers); the clean end is -1 (the scheduler's final alpha)."""

    name = "ddim"
    timestep_dtype = torch.int64

    def __init__(self, config: dict):
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(config)
        self.prediction = self.scheduler.config.prediction_type
        self.acp = self.scheduler.alphas_cumprod.double()  # [T]
        self.final = float(self.scheduler.final_alpha_cumprod)

    def times(self, steps: int) -> list[float]:
        self.scheduler.set_timesteps(steps)
        return [float(t) for t in self.scheduler.timesteps] + [-1.0]

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        acp = self.final if t < 0 else float(self.acp[int(round(t))])
        return math.sqrt(acp), math.sqrt(1.0 - acp)

    def model_time(self, t: float) -> float:
        return float(int(round(t)))


class _SigmaGrid:
    """Times are the scheduler's sigmas (steps + 1, ending at 0); the network's timestep for each grid
    sigma is remembered in `table` exactly as the scheduler computed it."""

    scheduler: Any
    table: dict[float, float]
    timestep_dtype = torch.float32

    def times(self, steps: int) -> list[float]:
        self.scheduler.set_timesteps(steps)
        sigmas = [float(s) for s in self.scheduler.sigmas]  # steps + 1, ends at 0
        self.table.update({s: float(t) for s, t in zip(sigmas, self.scheduler.timesteps)})
        return sigmas


class Euler(_SigmaGrid):
    """Times are diffusers' Euler sigmas (VE); the state is kept in VP form x / sqrt(1 + sigma^2),
    which is exactly what the network sees (diffusers' `scale_model_input`)."""

    name = "euler"

    def __init__(self, config: dict, karras: bool | None = None):
        import numpy as np
        from diffusers import EulerDiscreteScheduler

        # karras=True spaces the sigmas as Karras et al. (rho = 7); None keeps the scheduler's choice
        extra = {} if karras is None else {"use_karras_sigmas": karras}
        self.scheduler = EulerDiscreteScheduler.from_config(config, **extra)
        self.prediction = self.scheduler.config.prediction_type
        if karras:
            self.name = "euler-karras"
        acp = self.scheduler.alphas_cumprod.double().numpy()
        self.log_sigmas = np.log(((1 - acp) / acp) ** 0.5)
        self.table: dict[float, float] = {}

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        c = math.sqrt(1.0 + t * t)
        return 1.0 / c, t / c

    def model_time(self, t: float) -> float:
        if t in self.table:
            return self.table[t]
        import numpy as np

        return float(self.scheduler._sigma_to_t(np.array(t), self.log_sigmas))


class Flow(_SigmaGrid):
    """Flow matching: x_t = (1 - t) x0 + t eps; the network takes t * num_train_timesteps."""

    name = "flow"
    prediction = "flow"

    def __init__(self, config: dict):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if config.get("use_dynamic_shifting"):
            raise ModelLoadError("flow-matching schedulers with use_dynamic_shifting (resolution-dependent "
                                 "shift, e.g. FLUX) are not supported; use a fixed shift")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.train_steps = float(self.scheduler.config.num_train_timesteps)
        self.table: dict[float, float] = {}

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        return 1.0 - t, t

    def model_time(self, t: float) -> float:
        return self.table.get(t, t * self.train_steps)


def make_sampler(name: str | None, scheduler) -> Sampler:
    """The deterministic sampler `name` over a diffusers `scheduler`'s config.

    Args:
        name: one of SAMPLERS, or None for the scheduler's own kind (flow for flow-matching
            schedulers, euler for an Euler scheduler, else ddim).
        scheduler: a diffusers scheduler (its config and training noise schedule are used).
    Returns:
        A `Sampler`; a ConfigError when `name` is unknown or does not fit the scheduler.
    """
    config = dict(scheduler.config)
    is_flow = "FlowMatch" in type(scheduler).__name__
    if name is None:
        name = "flow" if is_flow else "euler" if type(scheduler).__name__.startswith("Euler") else "ddim"
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    if (name == "flow") != is_flow:
        kind = "a flow-matching" if is_flow else "a noise-prediction (VP)"
        allowed = "flow" if is_flow else "ddim, euler, euler-karras"
        raise ConfigError(f"sampler {name!r} does not fit {kind} scheduler ({type(scheduler).__name__}); "
                          f"use {allowed}")
    if name == "flow":
        return Flow(config)
    sampler = Euler(config, karras=True) if name == "euler-karras" else (Euler if name == "euler" else DDIM)(config)
    if sampler.prediction not in PREDICTIONS[:3]:
        raise ModelLoadError(f"prediction_type {sampler.prediction!r} is not supported "
                             f"(epsilon, v_prediction, sample)")
    return sampler


def split_prediction(prediction: str, pred: torch.Tensor, x_t: torch.Tensor, a: float,
                     s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network output `pred` at a time with forward-process scales (a, s).

    prediction: "epsilon" (pred = eps), "v_prediction" (v = a eps - s x0, with a^2 + s^2 = 1),
    "sample" (pred = x0) or "flow" (v = eps - x0, with a = 1 - t, s = t). x_t, pred: [B, ...]."""
    if prediction == "epsilon":
        return (x_t - s * pred) / a, pred
    if prediction == "v_prediction":
        return a * x_t - s * pred, s * x_t + a * pred
    if prediction == "sample":
        return pred, (x_t - a * pred) / s
    if prediction == "flow":
        return x_t - s * pred, x_t + a * pred
    raise ModelLoadError(f"prediction {prediction!r} is not supported; allowed: {', '.join(PREDICTIONS)}")


def forward_process(x0: torch.Tensor, eps: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """x_t = a x0 + s eps ([B, ...]); at the clean end (s = 0) eps is not used at all."""
    return a * x0 + s * eps if s > 0 else a * x0


def renoise_scales(sampler: Sampler, t_from: float, t_to: float) -> tuple[float, float]:
    """(r, std) such that x_to = r x_from + std noise is the forward process from t_from to the
    noisier t_to: r = a_to / a_from, std = sqrt(s_to^2 - r^2 s_from^2). From the clean end this is
    q(x_t | x0) = a x0 + s noise. Pure noise stays pure noise: (1, 0). ConfigError when t_to is
    less noisy than t_from."""
    a_from, s_from = sampler.alpha_sigma(t_from)
    a_to, s_to = sampler.alpha_sigma(t_to)
    # noise level s / a (infinite at pure noise) may only grow
    level_from = s_from / a_from if a_from > 0 else math.inf
    level_to = s_to / a_to if a_to > 0 else math.inf
    if level_to < level_from * (1 - 1e-9):
        raise ConfigError(f"renoise goes to a noisier time: {t_to} is less noisy than {t_from}")
    if a_from == 0:
        return 1.0, 0.0
    ratio = a_to / a_from
    return ratio, math.sqrt(max(s_to * s_to - ratio * ratio * s_from * s_from, 0.0))


__all__ = ["DDIM", "PREDICTIONS", "SAMPLERS", "Euler", "Flow", "Sampler", "forward_process", "make_sampler",
           "renoise_scales", "split_prediction"]
