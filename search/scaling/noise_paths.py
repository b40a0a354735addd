"""Search over paths: prune denoising trajectories by the verifier on x0 predictions, round by round.

Paper: Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
section 3.2 (search over paths). Rule: denoise N noises to the schedule point `start`; each round,
re-noise every kept sample `forward` steps back with M fresh noises (M branches), denoise the N*M
branches `backward` steps (backward > forward, so each round advances), score the verifier on their
x0 predictions (on the samples themselves at the clean end) and keep the top N. Repeat to the end.
"""

from __future__ import annotations

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
    predict_x0,
    score_x0,
    seeded_noise,
)


def path_rounds(steps: int, start: int, forward: int, backward: int) -> list[tuple[int, int]]:
    """The rounds' (re-noised schedule index, index reached): from `start` until `steps` (the clean end)."""
    rounds, i = [], start
    while i < steps:
        lo = i - forward
        i = min(lo + backward, steps)
        rounds.append((lo, i))
    return rounds


def paths_nfe(n: int, branches: int, steps: int, start: int, forward: int, backward: int) -> int:
    """NFEs of one search: n * start to reach `start`, then per round n * branches rows times the steps
    denoised, plus one x0 prediction per row on every round that stops before the clean end."""
    total = n * start
    for lo, hi in path_rounds(steps, start, forward, backward):
        total += n * branches * ((hi - lo) + (hi < steps))
    return total


def check_path_options(steps: int, branches: int, start: int | None, forward: int, backward: int) -> int:
    """Validate the schedule options; returns `start` (default: half way, at least `forward`)."""
    positive_int("branches", branches)
    positive_int("forward", forward)
    positive_int("backward", backward)
    if backward <= forward:
        raise ConfigError(f"backward ({backward}) must exceed forward ({forward}) so every round moves towards "
                          "the clean end")
    start = max(forward, steps // 2) if start is None else start
    if isinstance(start, bool) or not isinstance(start, int) or not (forward <= start < steps):
        raise ConfigError(f"start must be a schedule index with forward ({forward}) <= start < steps ({steps}), "
                          f"got {start!r}")
    return start


def noise_paths(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                steps: int | None = None, branches: int = 2, start: int | None = None, forward: int = 1,
                backward: int = 2, **options) -> Result:
    """Search over paths with `n` kept samples and `branches` re-noised branches each per round.

    Args:
        model: a `Denoiser`. prompt: what `model.condition` takes. verifier: scores decoded images.
        n: samples kept each round. seed: initial noise i and branch noise j come from generator
            (seed, i) / (seed, j) (branch indices continue after the initial ones).
        steps: schedule length. start: schedule index the first N samples are denoised to (default
            max(forward, steps // 2)). forward / backward: steps re-noised / denoised per round.
        branches: M, re-noised copies per kept sample per round.
    Returns:
        A Result whose candidates are the final top `n` (meta: path = the noise indices that
        re-render it, round_scores = its verifier scores at each pruning) and best the top one.
        NFE equals `paths_nfe(...)`.
    """
    no_extra_options("noise-paths", options, ("steps", "branches", "start", "forward", "backward"))
    verifier, steps = check_search(model, verifier, "noise-paths", n, steps)
    start = check_path_options(steps, branches, start, forward, backward)
    compute = Compute()
    with compute.timed(), torch.no_grad():
        cond = model.condition(prompt, n)
        times = model.timesteps(steps)
        x = denoise(model, seeded_noise(model, seed, range(n)), cond, times[:start + 1], compute)
        paths = [[i] for i in range(n)]  # noise indices that built each kept sample
        round_scores: list[list[float]] = [[] for _ in range(n)]
        next_index = n
        for lo, hi in path_rounds(steps, start, forward, backward):
            cur = lo + forward  # the schedule index the kept samples are at
            kept = x.shape[0]
            indices = list(range(next_index, next_index + kept * branches))  # branch (k, m) -> k * M + m
            next_index += len(indices)
            parents = torch.arange(kept).repeat_interleave(branches)  # [K * M]
            x_lo = model.renoise(x[parents], times[cur], times[lo], seeded_noise(model, seed, indices))
            x_hi = denoise(model, x_lo, cond, times[lo:hi + 1], compute)  # [K * M, ...]
            clean = hi == steps
            x0 = x_hi if clean else predict_x0(model, x_hi, times[hi], cond, compute)
            outputs, scores = score_x0(model, verifier, prompt, x0, compute)
            top = sorted(range(len(scores)), key=lambda r: (-scores[r], r))[:n]  # ties: earliest branch
            x = x_hi[top]
            paths = [paths[int(parents[r])] + [indices[r]] for r in top]
            round_scores = [round_scores[int(parents[r])] + [scores[r]] for r in top]
    candidates = [make_candidate(outputs[r], scores[r], seed, p[-1], path=p, round_scores=rs)
                  for r, p, rs in zip(top, paths, round_scores)]
    config = base_config(model, prompt, verifier, "noise-paths", n, seed, steps)
    config.update(branches=branches, start=start, forward=forward, backward=backward)
    return Result(best=candidates[0], candidates=candidates, compute=compute, config=config)


def render_path(model, prompt: Any, path: list[int], *, seed: int, steps: int, start: int, forward: int = 1,
                backward: int = 2) -> torch.Tensor:
    """Re-render one candidate of `noise_paths` alone from its ``meta["path"]`` and the run's config:
    the clean sample [1, ...] (computed without gradients, as the search was)."""
    compute = Compute()
    with torch.no_grad():
        cond = model.condition(prompt, 1)
        times = model.timesteps(steps)
        x = denoise(model, seeded_noise(model, seed, path[:1]), cond, times[:start + 1], compute)
        cur = start
        for (lo, hi), index in zip(path_rounds(steps, start, forward, backward), path[1:]):
            x = model.renoise(x, times[cur], times[lo], seeded_noise(model, seed, [index]))
            x = denoise(model, x, cond, times[lo:hi + 1], compute)
            cur = hi
    return x


__all__ = ["noise_paths", "path_rounds", "paths_nfe", "render_path"]
