"""Seeded, batched denoising of candidates for any `Denoiser` — what `sample`, best-of-N and the noise
searches share.

Rule: candidate i of base seed s starts from ``model.noise([generator(s, i)])`` and is denoised by the
model's deterministic sampler, so the initial noise alone fixes the candidate: re-rendering with the
recorded seed (``torch.Generator().manual_seed(candidate.seed)``) and steps gives the same bytes.
NFEs are counted per batch row (the model's own ``nfe`` counter when it has one, which also counts
classifier-free-guidance pairs as 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ponder.errors import ConfigError
from ponder.search.core import Candidate, Compute, candidate_generators, candidate_seed


def check_steps(steps: Any) -> int:
    """`steps`, checked to be a positive integer (ConfigError otherwise)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ConfigError(f"steps must be a positive integer (denoising steps), got {steps!r}")
    return steps


class nfe_counter:  # noqa: N801 - used as a context manager like `Compute.timed`
    """``with nfe_counter(model, compute):`` adds the NFEs spent in the body to ``compute.nfe``.

    Uses the model's ``nfe`` attribute (per-row network evaluations); a `Denoiser` without one is
    counted by the caller with `count_rows`.
    """

    def __init__(self, model, compute: Compute):
        self.model, self.compute = model, compute

    def __enter__(self):
        self.start = getattr(self.model, "nfe", 0)
        return self

    def __exit__(self, *exc):
        self.compute.nfe += getattr(self.model, "nfe", 0) - self.start
        return False


def denoise(model, x: torch.Tensor, cond: Any, times: Sequence[float], compute: Compute) -> torch.Tensor:
    """Run `model.step` along `times` (len(times) - 1 steps) from x [B, ...]; NFEs go to `compute`."""
    with nfe_counter(model, compute):
        for t, t_next in zip(times[:-1], times[1:]):
            x = model.step(x, t, t_next, cond)
    return x


def denoise_candidates(model, prompt: Any, *, n: int, seed: int, compute: Compute,
                       indices: Sequence[int] | None = None, steps: int | None = None,
                       **decoder_options) -> tuple[list[Candidate], dict]:
    """Denoise candidates `indices` (default 0..n-1) of `prompt` as one batch.

    Args:
        model: a `Denoiser`.
        prompt: what `model.condition` takes (a class name, a text prompt).
        n: number of candidates (the config records it).
        seed: base seed; candidate i starts from noise drawn by generator (seed, i).
        compute: NFEs are added here.
        steps: denoising steps (default: the model's ``default_steps``, else 20).
        decoder_options: a token decoder's options; any is a ConfigError (a diffusion model has none).
    Returns:
        (candidates with PIL images as outputs, the config that reproduces them).
    """
    if decoder_options:
        raise ConfigError(f"a diffusion model takes no decoder option(s) {', '.join(sorted(decoder_options))}; "
                          "it takes steps")
    steps = check_steps(steps if steps is not None else getattr(model, "default_steps", 20))
    indices = list(range(n)) if indices is None else list(indices)
    cond = model.condition(prompt, len(indices))  # a bad prompt fails before any work
    times = model.timesteps(steps)
    x_T = model.noise(candidate_generators(seed, indices))  # [B, C, h, w]
    x0 = denoise(model, x_T, cond, times, compute)
    images = model.decode(x0)
    candidates = [Candidate(output=image, score=None, seed=candidate_seed(seed, index),
                            meta={"index": index, "steps": steps})
                  for index, image in zip(indices, images)]
    config = {"model": getattr(model, "name", type(model).__name__), "prompt": prompt, "n": n, "seed": seed,
              "steps": steps}
    config["diversity"] = mean_pairwise_distance(images)
    if hasattr(model, "info"):
        config["model_info"] = model.info()
    return candidates, config


def image_array(image) -> np.ndarray:
    """A PIL image (or array) as float pixels in [0, 1]. -> [H, W, C]"""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def mean_pairwise_distance(images: Sequence[Any]) -> float | None:
    """Sample diversity: the mean root-mean-square pixel distance over all pairs of images (pixels in
    [0, 1]; 0 = identical). A search that drives it towards 0 while its score rises is likely hacking
    its verifier. None for fewer than two images."""
    if len(images) < 2:
        return None
    flat = torch.from_numpy(np.stack([image_array(im).reshape(-1) for im in images]))  # [N, D]
    dist = torch.cdist(flat.double(), flat.double()) / flat.shape[1] ** 0.5  # [N, N]
    n = flat.shape[0]
    return float(dist.sum() / (n * (n - 1)))


__all__ = ["check_steps", "denoise", "denoise_candidates", "image_array", "mean_pairwise_distance", "nfe_counter"]
