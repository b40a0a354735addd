"""Seeded, batched denoising of candidates for any `Denoiser` — what `sample`, best-of-N and the noise
searches share.

Rule: candidate i of base seed s starts from ``model.noise([generator(s, i)])`` and is denoised by the
model's deterministic sampler, so the initial noise alone fixes the candidate: re-rendering with the
recorded seed (``torch.Generator().manual_seed(candidate.seed)``) and steps gives the same bytes.
NFEs are counted per batch row: a `CountsNFE` model's own counter (which also counts
classifier-free-guidance pairs as 2), else one per row per network-calling step.

Gradients: `denoise` leaves autograd as the caller set it; the strategies run it under
``torch.no_grad()`` (`denoise_candidates` does for sample / best-of-N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ponder.errors import ConfigError, check_int
from ponder.search.core import (
    Candidate,
    Compute,
    CountsNFE,
    Describes,
    HasDefaultSteps,
    Named,
    candidate_generators,
    candidate_seed,
)

DEFAULT_STEPS = 20  # for a Denoiser that has no default_steps of its own


def check_steps(steps: Any) -> int:
    """`steps`, checked to be a positive integer (ConfigError otherwise)."""
    return check_int("steps", steps, what="denoising steps")


def default_steps(model) -> int:
    """The model's own default steps (`HasDefaultSteps`), else `DEFAULT_STEPS`."""
    return model.default_steps if isinstance(model, HasDefaultSteps) else DEFAULT_STEPS


def model_name(model) -> str:
    """What results call the model: its `name` (`Named`), else its class name."""
    return model.name if isinstance(model, Named) else type(model).__name__


class nfe_counter:  # noqa: N801 - used as a context manager like `Compute.timed`
    """``with nfe_counter(model, compute, rows):`` adds the NFEs spent in the body to ``compute.nfe``.

    A `CountsNFE` model's own counter gives the exact figure (guidance pairs, a free clean end);
    for a model without one, `rows` (the caller's count of per-row network evaluations) is added.
    """

    def __init__(self, model, compute: Compute, rows: int):
        self.model, self.compute, self.rows = model, compute, rows
        self.counts = isinstance(model, CountsNFE)

    def __enter__(self):
        self.start = self.model.nfe if self.counts else 0
        return self

    def __exit__(self, *exc):
        self.compute.nfe += self.model.nfe - self.start if self.counts else self.rows
        return False


def denoise(model, x: torch.Tensor, cond: Any, times: Sequence[float], compute: Compute) -> torch.Tensor:
    """Run `model.step` along `times` (len(times) - 1 steps) from x [B, ...]; NFEs go to `compute`."""
    with nfe_counter(model, compute, rows=x.shape[0] * (len(times) - 1)):
        for t, t_next in zip(times[:-1], times[1:]):
            x = model.step(x, t, t_next, cond)  # [B, ...]
    return x


def denoise_candidates(model, prompt: Any, *, n: int, seed: int, compute: Compute,
                       indices: Sequence[int] | None = None, steps: int | None = None,
                       **decoder_options) -> tuple[list[Candidate], dict]:
    """Denoise candidates `indices` (default 0..n-1) of `prompt` as one batch, without gradients.

    Args:
        model: a `Denoiser`.
        prompt: what `model.condition` takes (a class name, a text prompt).
        n: number of candidates (the config records it).
        seed: base seed; candidate i starts from noise drawn by generator (seed, i).
        compute: NFEs are added here.
        steps: denoising steps (default: the model's ``default_steps``, else 20).
        decoder_options: a token decoder's options; any is a ConfigError (a diffusion model has none).
    Returns:
        (candidates with the model's decoded outputs, the config that reproduces them).
    """
    if decoder_options:
        raise ConfigError(f"a diffusion model takes no decoder option(s) {', '.join(sorted(decoder_options))}; "
                          "it takes steps")
    steps = check_steps(steps if steps is not None else default_steps(model))
    indices = list(range(n)) if indices is None else list(indices)
    with torch.no_grad():
        cond = model.condition(prompt, len(indices))  # a bad prompt fails before any work
        times = model.timesteps(steps)
        x_T = model.noise(candidate_generators(seed, indices))  # [B, C, h, w]
        x0 = denoise(model, x_T, cond, times, compute)
        outputs = model.decode(x0)
    candidates = [Candidate(output=output, score=None, seed=candidate_seed(seed, index),
                            meta={"index": index, "steps": steps})
                  for index, output in zip(indices, outputs)]
    config = {"model": model_name(model), "prompt": prompt, "n": n, "seed": seed, "steps": steps}
    if isinstance(model, Describes):
        config["model_info"] = model.info()
    return candidates, config


__all__ = ["DEFAULT_STEPS", "check_steps", "default_steps", "denoise", "denoise_candidates", "model_name",
           "nfe_counter"]
