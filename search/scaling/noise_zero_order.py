"""Zero-order search over the initial noise: a pivot and its neighbours at distance lambda.

Paper: Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
section 3.2 (zero-order search). Rule: start from a pivot noise; each round, denoise N candidates in
the pivot's neighbourhood {y : ||y|| = ||p||, ||y - p|| = lambda * ||p||} (on the pivot's sphere;
the first round's N include the pivot itself), score them with the verifier, and move the pivot to
the round's best only if it beats the pivot's score. NFE = N * steps * iterations; the final pivot
is the best sample seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.search.core import Compute, Result, Verifier
from ponder.search.scaling.denoise import denoise
from ponder.search.scaling.noise_common import (
    base_config,
    check_search,
    make_candidate,
    no_extra_options,
    positive_int,
    score_x0,
    seeded_noise,
)


def neighbours(model, pivot: torch.Tensor, seed: int, indices: Sequence[int], step_size: float) -> torch.Tensor:
    """Noises on the pivot's sphere (same norm, so they stay where Gaussian noise lives) at distance
    ``step_size * ||pivot||`` from `pivot` [1, ...], one per index: the pivot rotated by the angle
    2 asin(lambda / 2) towards a direction drawn from generator (seed, j) (its part orthogonal to
    the pivot). -> [B, ...]"""
    shape = (-1, *[1] * (pivot.dim() - 1))
    radius = pivot.flatten(1).norm(dim=1).view(shape)  # [1, 1, ...]
    unit = pivot / radius
    direction = seeded_noise(model, seed, indices)  # [B, ...]
    direction = direction - (direction * unit).flatten(1).sum(1).view(shape) * unit  # orthogonal to the pivot
    direction = direction / direction.flatten(1).norm(dim=1).view(shape)
    angle = 2 * math.asin(step_size / 2)  # chord length lambda on the unit sphere
    return math.cos(angle) * pivot + math.sin(angle) * radius * direction


def chain_noise(model, seed: int, chain: Sequence[int], step_size: float) -> torch.Tensor:
    """Rebuild the noise of a candidate from its ``meta["chain"]`` (pivot indices, then its own): [1, ...]."""
    x = seeded_noise(model, seed, [chain[0]])
    for index in chain[1:]:
        x = neighbours(model, x, seed, [index], step_size)
    return x


def noise_zero_order(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                     steps: int | None = None, iterations: int = 4, step_size: float = 0.5,
                     **options) -> Result:
    """Zero-order search: `iterations` rounds of `n` neighbours of the pivot; the pivot moves on improvement.

    Args:
        model: a `Denoiser`. prompt: what `model.condition` takes. verifier: scores decoded images.
        n: candidates per round (>= 2: round one is the pivot plus n - 1 neighbours).
        seed: candidate j's noise (the pivot, j = 0) or direction comes from generator (seed, j).
        steps: denoising steps per sample. iterations: rounds. step_size: lambda, the neighbours'
            distance as a share of the pivot's norm (0 < lambda < 2; 2 would be the antipode).
    Returns:
        A Result with every evaluated candidate (meta: round, chain = pivot indices then its own, became_pivot)
        and best = the final pivot (the highest score seen; ties to the earliest).
    """
    no_extra_options("noise-zero-order", options, ("steps", "iterations", "step_size"))
    verifier, steps = check_search(model, verifier, "noise-zero-order", n, steps)
    if n < 2:
        raise ConfigError(f"noise-zero-order needs n >= 2 (the pivot and at least one neighbour), got {n}")
    positive_int("iterations", iterations)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not (0 < step_size < 2):
        raise ConfigError(f"step_size (lambda) must be a number in (0, 2) (a share of the pivot's norm), "
                          f"got {step_size!r}")
    compute = Compute()
    candidates = []
    with compute.timed(), torch.no_grad():
        cond = model.condition(prompt, n)
        times = model.timesteps(steps)
        pivot = seeded_noise(model, seed, [0])  # [1, ...]
        pivot_index, pivot_score, pivot_chain = 0, -math.inf, [0]
        path = []
        next_index = 1
        for round_ in range(iterations):
            first = 1 if round_ == 0 else 0  # round one spends one of its n slots on the pivot itself
            indices = list(range(next_index, next_index + n - first))
            next_index += len(indices)
            x_T = neighbours(model, pivot, seed, indices, step_size)  # [n - first, ...]
            chains = [pivot_chain + [j] for j in indices]
            if first:
                x_T, indices, chains = torch.cat([pivot, x_T]), [0, *indices], [[0], *chains]
            x0 = denoise(model, x_T, cond, times, compute)
            outputs, scores = score_x0(model, verifier, prompt, x0, compute)
            round_cands = [make_candidate(o, s, seed, j, round=round_, chain=c)
                           for j, o, s, c in zip(indices, outputs, scores, chains)]
            candidates += round_cands
            top = max(range(len(round_cands)), key=lambda k: (scores[k], -k))
            moved = scores[top] > pivot_score  # move only on a strict improvement
            for c in round_cands:
                c.meta["became_pivot"] = moved and c is round_cands[top]
            if moved:
                pivot, pivot_index, pivot_score, pivot_chain = x_T[top:top + 1], indices[top], scores[top], chains[top]
            path.append(pivot_index)
    best = next(c for c in candidates if c.meta["index"] == pivot_index)
    config = base_config(model, prompt, verifier, "noise-zero-order", n, seed, steps)
    config.update(iterations=iterations, step_size=step_size, pivot_path=path)
    return Result(best=best, candidates=candidates, compute=compute, config=config)


__all__ = ["chain_noise", "neighbours", "noise_zero_order"]
