"""Deterministic Euler over the sigmas of a cosine-DPM (Stable Audio) scheduler config.

Paper: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM:
the deterministic Euler step over the sigmas, the c_in / c_skip / c_out preconditioning); Evans et al.
2024, "Stable Audio Open" (diffusers' ``CosineDPMSolverMultistepScheduler``: v-prediction, the
v-diffusion noise conditioning ``t = atan(sigma) * 2 / pi``).

Rule: in EDM's variable x = x0 + sigma eps the network sees ``c_in x = x / sqrt(1 + sigma^2)``
(sigma_data = 1) and its v output F gives ``x0 = c_skip x + c_out F``. In the scaled variable
``z = x / sqrt(1 + sigma^2) = a x0 + s eps`` with ``a = 1 / sqrt(1 + sigma^2)``, ``s = sigma a`` that is
exactly the v-prediction rule ``x0 = a z - s F``, and Karras' deterministic Euler step
``x' = x + (x - x0) / sigma * (sigma' - sigma)`` is ``z' = a' x0 + s' eps``: the shared core's step.
So this sampler only supplies the time grid (the scheduler's sigmas, computed here from its config the
way diffusers does, so diffusers' class and its torchsde dependency are not needed) and the timestep
the network is called with. The pipeline's own scheduler adds Brownian-tree noise at every step (an
SDE solver); this is its deterministic (probability-flow) counterpart, which search needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ponder.errors import ModelLoadError

COSINE_DPM = "CosineDPMSolverMultistepScheduler"


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler config a sampler was built from (what `DiffusionDenoiser.split` reads as ``.config``)."""

    config: dict


class CosineEulerEDM:
    """Times are the cosine-DPM scheduler's sigmas (steps + 1, ending at 0); the state is z = x / sqrt(1 + sigma^2)."""

    name = "edm-euler"
    prediction = "v_prediction"
    timestep_dtype = torch.float32

    def __init__(self, config: dict):
        config = dict(config)
        kind = config.get("_class_name", COSINE_DPM)
        if kind != COSINE_DPM:
            raise ModelLoadError(f"the edm-euler sampler reads a {COSINE_DPM} config, got {kind}")
        checks = {"prediction_type": ("v_prediction",), "sigma_schedule": ("exponential", "karras"),
                  "final_sigmas_type": ("zero",)}
        defaults = {"prediction_type": "v_prediction", "sigma_schedule": "exponential", "final_sigmas_type": "zero"}
        for key, allowed in checks.items():
            value = config.get(key, defaults[key])
            if value not in allowed:
                raise ModelLoadError(f"{kind} with {key}={value!r} is not supported; allowed: {', '.join(allowed)}")
        if float(config.get("sigma_data", 1.0)) != 1.0:
            raise ModelLoadError(f"{kind} with sigma_data={config['sigma_data']!r} is not supported (only 1.0, as "
                                 "Stable Audio Open)")
        self.sigma_min = float(config.get("sigma_min", 0.3))
        self.sigma_max = float(config.get("sigma_max", 500.0))
        if not 0 < self.sigma_min < self.sigma_max:
            raise ModelLoadError(f"{kind} needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        self.karras = config.get("sigma_schedule", "exponential") == "karras"
        self.rho = float(config.get("rho", 7.0))
        self.scheduler = SchedulerConfig(config)
        self.table: dict[float, float] = {}

    def sigmas(self, steps: int) -> torch.Tensor:
        """The scheduler's `steps` sigmas, noisiest first, in float32 as diffusers computes them. -> [steps]"""
        ramp = torch.linspace(0, 1, steps)
        if self.karras:  # Karras et al. (rho spacing)
            lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
            return (hi + ramp * (lo - hi)) ** self.rho
        return torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), steps).exp().flip(0)

    def times(self, steps: int) -> list[float]:
        sigmas = self.sigmas(steps).float()
        timesteps = sigmas.atan() / math.pi * 2  # the v-diffusion time the network was trained on
        self.table.update({float(s): float(t) for s, t in zip(sigmas, timesteps)})
        return [float(s) for s in sigmas] + [0.0]

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        c = math.sqrt(1.0 + t * t)
        return 1.0 / c, t / c

    def model_time(self, t: float) -> float:
        return self.table.get(t, math.atan(t) / math.pi * 2)


__all__ = ["COSINE_DPM", "CosineEulerEDM", "SchedulerConfig"]
