"""Pieces the noise searches over a `Denoiser` share: option checks, seeded noises, x0 predictions
with their NFEs counted, and verifier scoring of decoded x0 (predictions) with its calls counted.

Denoising itself is `ponder.search.scaling.denoise.denoise` (shared with sample / best-of-N): NFEs are
a `CountsNFE` model's own per-row count, so a classifier-free-guidance pair costs 2. The searches
run under ``torch.no_grad()`` (they select, they do not differentiate); the diversity of what they
return is measured outside search, by the modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ponder.errors import ConfigError, check_int
from ponder.search.core import (
    Candidate,
    Compute,
    Denoiser,
    Describes,
    Named,
    Verifier,
    candidate_generators,
    candidate_seed,
)
from ponder.search.scaling.common import require_verifier
from ponder.search.scaling.denoise import check_steps, default_steps, model_name, nfe_counter


def positive_int(name: str, value: Any) -> int:
    """`value` if it is a positive integer, else a ConfigError naming `name`."""
    return check_int(name, value)


def no_extra_options(strategy: str, options: dict, allowed: Sequence[str]) -> None:
    """A ConfigError naming the first option `strategy` does not take, and the ones it does."""
    for name in options:
        raise ConfigError(f"strategy {strategy!r} has no option {name!r}; its options: {', '.join(allowed)}")


def check_search(model, verifier: Verifier | None, strategy: str, n: int, steps: int | None) -> tuple[Verifier, int]:
    """Validate the options every noise search takes; returns (verifier, steps)."""
    require_verifier(verifier, strategy)
    positive_int("n", n)
    if not isinstance(model, Denoiser):
        raise ConfigError(f"strategy {strategy!r} searches over diffusion noise: it needs a Denoiser "
                          f"(an image or music diffusion model), got {type(model).__name__}")
    return verifier, check_steps(default_steps(model) if steps is None else steps)


def seeded_noise(model, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """The initial noise of candidates `indices`: candidate i draws from generator (seed, i). -> [B, ...]"""
    return model.noise(candidate_generators(seed, list(indices)))


def predict_x0(model, x: torch.Tensor, t: float, cond: Any, compute: Compute) -> torch.Tensor:
    """The model's x0 estimate of every row of x [B, ...] at time t (one NFE per row, counted)."""
    with nfe_counter(model, compute, rows=x.shape[0]):
        return model.predict_x0(x, t, cond)


def score_x0(model, verifier: Verifier, prompt: Any, x0: torch.Tensor, compute: Compute) -> tuple[list, list[float]]:
    """Decode x0 [B, ...] and score the outputs: (outputs, scores); counts B verifier calls."""
    outputs = model.decode(x0)
    scores = verifier.score(prompt, outputs)  # [B]
    compute.verifier_calls += len(outputs)
    return outputs, [float(s) for s in scores.tolist()]


def make_candidate(output: Any, score: float, seed: int, index: int, **meta) -> Candidate:
    """A candidate whose seed is that of index `index` under base seed `seed`."""
    return Candidate(output=output, score=score, seed=candidate_seed(seed, index), meta={"index": index, **meta})


def base_config(model, prompt: Any, verifier: Verifier, strategy: str, n: int, seed: int, steps: int) -> dict:
    """The config fields every noise search records (model, strategy, prompt, verifier, n, seed,
    steps, and the model's `info()` when it `Describes` itself)."""
    config = {"model": model_name(model), "strategy": strategy, "prompt": prompt,
              "verifier": verifier.name if isinstance(verifier, Named) else None, "n": n, "seed": seed,
              "steps": steps}
    if isinstance(model, Describes):
        config["model_info"] = model.info()
    return config
