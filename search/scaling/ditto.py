"""DITTO: optimise the initial noise so that a differentiable score of the output rises.

Paper: Novack, McAuley, Berg-Kirkpatrick and Bryan 2024, "DITTO: Diffusion Inference-Time
T-Optimization for Music Generation". Rule: the model stays frozen; the initial noise x_T is the only
parameter. Each optimisation step runs the whole deterministic sampler x_T -> x0 (gradient
checkpointing per step, so activation memory does not grow with the step count), decodes x0 to the
output tensor, and takes one Adam step on x_T against the loss ``-score_tensor(prompt, output)`` of a
`DifferentiableVerifier` (a control's negative loss, a classifier's log-probability …). Rows are
independent: the loss is a sum over candidates and Adam is element-wise, so candidate i's path
depends only on its own seeded noise. Each candidate returns the best iterate it reached (its score
at step 0 is plain sampling's).

Modality-free: any `Denoiser` that `DecodesTensor` and any `DifferentiableVerifier`; images and audio
alike. Compute: ``backward_passes`` counts one backward through the whole chain per candidate per
optimisation step; ``nfe`` counts every network evaluation, the recomputations of checkpointed steps
in backward included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ponder.errors import ConfigError, check_int, check_number
from ponder.search.core import (
    Candidate,
    Compute,
    DecodesTensor,
    DifferentiableVerifier,
    Named,
    Result,
    Verifier,
    candidate_seed,
)
from ponder.search.scaling.best_of_n import pick_best
from ponder.search.scaling.denoise import nfe_counter
from ponder.search.scaling.noise_common import base_config, check_search, seeded_noise
from ponder.search.scaling.sample_chain import sample_chain

Surrogate = Callable[[torch.Tensor], torch.Tensor]  # x_T [B, ...] -> x0 [B, ...], differentiable


def check_optimisation(model, verifier: Verifier | None, strategy: str, n: int, steps: int | None,
                       opt_steps: Any, lr: Any) -> tuple[DifferentiableVerifier, int, int, float]:
    """The checks DITTO and DITTO-2 share; returns (verifier, steps, opt_steps, lr)."""
    verifier, steps = check_search(model, verifier, strategy, n, steps)
    if not isinstance(model, DecodesTensor):
        raise ConfigError(f"strategy {strategy!r} differentiates the decoded output: the model needs "
                          f"decode_tensor (a differentiable decode), {type(model).__name__} has none")
    if not isinstance(verifier, DifferentiableVerifier):
        name = verifier.name if isinstance(verifier, Named) else type(verifier).__name__
        raise ConfigError(f"strategy {strategy!r} follows the gradient of the verifier's score: it needs a "
                          f"differentiable verifier (with score_tensor, e.g. classifier or aesthetic for "
                          f"images); {name!r} has none")
    opt_steps = check_int("opt_steps", opt_steps, what="Adam steps on the initial noise")
    lr = check_number("lr", lr, minimum=0.0, open_min=True, what="Adam learning rate")
    return verifier, steps, opt_steps, lr


def optimise_noise(model, verifier: DifferentiableVerifier, prompt: Any, x_T: torch.Tensor,
                   surrogate: Surrogate, *, opt_steps: int, lr: float, compute: Compute,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[float]]]:
    """Adam on the initial noise x_T [B, ...] against ``-verifier.score_tensor(decode_tensor(surrogate(x_T)))``.

    Returns (the best x_T each row reached [B, ...], the surrogate's x0 there [B, ...], that row's best
    surrogate score [B], every row's surrogate score per step [B][opt_steps + 1], the last entry scored
    after the final update).
    """
    noise = x_T.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([noise], lr=lr)
    best_noise = noise.detach().clone()
    best_x0: torch.Tensor | None = None
    best_score = torch.full((x_T.shape[0],), float("-inf"))
    history: list[list[float]] = [[] for _ in range(x_T.shape[0])]
    for step in range(opt_steps + 1):
        final = step == opt_steps  # score the last update without another backward
        with torch.set_grad_enabled(not final):
            x0 = surrogate(noise)  # [B, ...]
            score = verifier.score_tensor(prompt, model.decode_tensor(x0))  # [B]
        compute.verifier_calls += x_T.shape[0]
        detached = score.detach().float()
        better = detached > best_score  # [B]
        best_score = torch.where(better, detached, best_score)
        best_noise[better] = noise.detach()[better]
        best_x0 = x0.detach().clone() if best_x0 is None else torch.where(
            better.view(-1, *[1] * (x0.dim() - 1)), x0.detach(), best_x0)
        for row, value in enumerate(detached.tolist()):
            history[row].append(value)
        if final:
            break
        adam.zero_grad(set_to_none=True)
        (-score.sum()).backward()  # rows independent: d(sum)/d(row) is that row's own gradient
        compute.backward_passes += x_T.shape[0]
        adam.step()
    return best_noise, best_x0, best_score, history


def ditto(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
          steps: int | None = None, opt_steps: int = 20, lr: float = 0.05, checkpoint: bool = True) -> Result:
    """DITTO: `n` seeded initial noises, each optimised by `opt_steps` Adam steps through the full sampler.

    Args:
        model: a `Denoiser` that `DecodesTensor` (images, audio).
        prompt: what `model.condition` takes.
        verifier: a `DifferentiableVerifier` whose `score_tensor` is maximised (required).
        n: candidates. seed: candidate i starts from the noise of generator (seed, i).
        steps: sampler steps (default: the model's). opt_steps: Adam steps (> 0). lr: Adam's step size.
        checkpoint: recompute each sampler step in backward (flat activation memory; one extra
            forward per step).
    Returns:
        A Result: every candidate decoded from the best noise it reached, scored by the verifier's
        `score_tensor`; ``meta`` holds its score before (plain sampling's) and after, and the history.
    """
    verifier, steps, opt_steps, lr = check_optimisation(model, verifier, "ditto", n, steps, opt_steps, lr)
    if not isinstance(checkpoint, bool):
        raise ConfigError(f"checkpoint must be true or false, got {checkpoint!r}")
    compute = Compute()
    indices = list(range(n))
    with compute.timed():
        cond = model.condition(prompt, n)
        times = model.timesteps(steps)
        x_T = seeded_noise(model, seed, indices)  # [B, ...]

        def full_chain(noise: torch.Tensor) -> torch.Tensor:
            return sample_chain(model, noise, cond, times, checkpoint=checkpoint)

        # per row: a forward of every step per Adam step (and its recomputation in backward when
        # checkpointed), plus the forward that scores the last update
        with nfe_counter(model, compute, rows=n * (len(times) - 1) * (opt_steps * (2 if checkpoint else 1) + 1)):
            _, best_x0, best_score, history = optimise_noise(model, verifier, prompt, x_T, full_chain,
                                                             opt_steps=opt_steps, lr=lr, compute=compute)
        outputs = model.decode(best_x0)  # the best iterate's x0: no chain to run again
    candidates = [Candidate(output=out, score=float(best_score[i]), seed=candidate_seed(seed, i),
                            meta={"index": i, "score_before": history[i][0], "score_after": float(best_score[i]),
                                  "score_history": [round(v, 6) for v in history[i]]})
                  for i, out in enumerate(outputs)]
    config = base_config(model, prompt, verifier, "ditto", n, seed, steps)
    config.update(opt_steps=opt_steps, lr=lr, checkpoint=checkpoint)
    return Result(best=pick_best(candidates), candidates=candidates, compute=compute, config=config)


__all__ = ["check_optimisation", "ditto", "optimise_noise"]
