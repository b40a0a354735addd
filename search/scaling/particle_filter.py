"""Particle filtering over steps, with process-verifier scores as weights; Particle Gibbs.

Paper: Puri et al. 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs
using Particle-Based Monte Carlo Methods" (the PRM score of a partial solution is the potential of
a state-space model whose transitions are the LLM's steps; particle filtering samples its posterior;
Particle Gibbs repeats it conditioned on a reference particle).

Rule (sequential Monte Carlo with twisting potentials):
* `n` particles start from the prompt; every round each unfinished particle advances one step;
  finished particles stay as they are (and keep taking part in resampling);
* the potential of a particle is ``psi = exp(score / weight_temperature)`` where `score` is the
  process verifier's score (finished particles: the outcome score); a particle's log-weight grows by
  ``log psi_t - log psi_(t-1)`` each round, so with no resampling the final weights are
  ``softmax(score / weight_temperature)``: the target is ``p_model(x) * exp(score(x) / T)``;
* when the effective sample size ``1 / sum(w^2)`` of the normalised weights drops below
  ``ess_threshold * n`` the particles are resampled (``multinomial`` or ``systematic``) and the
  weights reset to uniform (``ess_threshold=1`` resamples every round, as in the paper);
* Particle Gibbs (``gibbs_iterations > 1``): after each sweep one particle is drawn by its final
  weight as the reference; the next sweep keeps slot 0 on the reference's path (step for step)
  while the other particles are resampled around it (conditional SMC);
* the result: ``select="weight"`` (default) returns the particle with the largest final weight,
  ``"sample"`` draws one by weight (a posterior sample), ``"vote"`` sums weights per final answer.
Both resampling schemes are unbiased: particle i's expected number of copies is ``n * w_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import generator_seed, make_generators
from ponder.search.core import Compute, Result, Verifier
from ponder.search.scaling.best_of_n import vote_by_answer
from ponder.search.scaling.common import answer_function, check_n, check_threshold, finish
from ponder.search.scaling.steps import Partial, Stepper, check_positive_int, max_rounds, require_process_verifier

RESAMPLERS = ("multinomial", "systematic")
SELECTIONS = ("weight", "sample", "vote")


def multinomial_resample(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` ancestor indices drawn i.i.d. from normalised `weights` [N] -> [count]."""
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def systematic_resample(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Systematic resampling: one uniform u, points (u + k) / count, inverted through the CDF.
    Particle i gets floor or ceil of ``count * w_i`` copies. [N] -> [count]"""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    points = (u + torch.arange(count, dtype=torch.float64)) / count  # [count]
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    cdf[-1] = 1.0  # guard against rounding
    return torch.searchsorted(cdf, points, right=True).clamp(max=len(weights) - 1)


def resample(weights: torch.Tensor, count: int, scheme: str, generator: torch.Generator) -> torch.Tensor:
    if scheme == "multinomial":
        return multinomial_resample(weights, count, generator)
    if scheme == "systematic":
        return systematic_resample(weights, count, generator)
    raise ConfigError(f"unknown resampling {scheme!r}; allowed: {', '.join(RESAMPLERS)}")


def effective_sample_size(weights: torch.Tensor) -> float:
    """1 / sum(w_i^2) of normalised weights: n when uniform, 1 when one particle holds all."""
    return float(1.0 / (weights.double() ** 2).sum())


def _check_options(n, weight_temperature, resampling, ess_threshold, gibbs_iterations, select):
    check_n(n)
    t = check_threshold("weight_temperature", weight_temperature)
    if t <= 0 or math.isinf(t):
        raise ConfigError(f"weight_temperature must be a positive finite number, got {weight_temperature!r}")
    if resampling not in RESAMPLERS:
        raise ConfigError(f"unknown resampling {resampling!r}; allowed: {', '.join(RESAMPLERS)}")
    e = check_threshold("ess_threshold", ess_threshold)
    if not 0 <= e <= 1:
        raise ConfigError(f"ess_threshold must be in [0, 1] (a share of n), got {ess_threshold!r}")
    check_positive_int("gibbs_iterations", gibbs_iterations)
    if gibbs_iterations > 1 and n < 2:
        raise ConfigError(f"Particle Gibbs needs n >= 2 (a reference and at least one free particle), got n={n}")
    if select not in SELECTIONS:
        raise ConfigError(f"unknown select {select!r}; allowed: {', '.join(SELECTIONS)}")
    return t


def _sweep(stepper: Stepper, verifier, n: int, *, temperature: float, scheme: str, ess_threshold: float,
           rounds: int, generator: torch.Generator, reference: Partial | None, stats: dict):
    """One SMC sweep; returns the particles and their normalised final weights [n]."""
    particles = [Partial(origin=j) for j in range(n)]
    log_w = torch.zeros(n, dtype=torch.float64)
    log_psi = torch.zeros(n, dtype=torch.float64)
    for r in range(rounds):
        if reference is None:
            particles = stepper.extend(particles)
        else:  # conditional SMC: slot 0 follows the reference path
            particles = [_reference_prefix(reference, r + 1)] + stepper.extend(particles[1:])
        scores = stepper.score(verifier, particles).double()
        new_psi = scores / temperature
        log_w += new_psi - log_psi
        log_psi = new_psi
        weights = torch.softmax(log_w, 0)
        if all(p.done for p in particles):
            break
        ess = effective_sample_size(weights)
        if ess < ess_threshold * n:
            stats["resamples"] += 1
            if reference is not None:
                idx = torch.cat([torch.zeros(1, dtype=torch.long), resample(weights, n - 1, scheme, generator)])
            else:
                idx = resample(weights, n, scheme, generator)
            particles = [particles[i].copy() for i in idx.tolist()]
            log_psi = log_psi[idx]
            log_w = torch.zeros(n, dtype=torch.float64)
    return particles, torch.softmax(log_w, 0), log_psi * temperature


def _reference_prefix(reference: Partial, steps: int) -> Partial:
    """The reference particle as it stood after `steps` steps."""
    p = reference.copy()
    if steps < len(reference.bounds):
        p.ids = p.ids[: reference.bounds[steps - 1]]
        p.bounds = p.bounds[:steps]
        p.done, p.reason, p.final_score = False, None, None
    p.origin = 0
    return p


def particle_filter(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                    weight_temperature: float = 0.1, resampling: str = "systematic", ess_threshold: float = 0.5,
                    gibbs_iterations: int = 1, select: str = "weight", max_steps: int | None = None,
                    answer_fn: Callable | None = None, abstain_below: float | None = None, fork_cache: bool = True,
                    **options) -> Result:
    """Particle filtering with `n` particles.

    Args:
        n: particles.
        weight_temperature: T in ``softmax(score / T)`` (> 0; smaller is greedier).
        resampling: "multinomial" | "systematic".
        ess_threshold: resample when ESS < ess_threshold * n (1: every round; 0: never).
        gibbs_iterations: > 1 runs Particle Gibbs with that many sweeps (budget n per sweep).
        select: "weight" | "sample" | "vote" (how the result is read from the final particles).
        max_steps: most rounds per sweep.
        answer_fn: for select="vote" (default: the model's extract_answer).
        abstain_below: return best=None when the best particle's score is below this.
        fork_cache: keep each partial's cache row across rounds (plain decoding) instead of re-prefilling
            prompt + partial every round; the same outputs up to float rounding.
        options: decoding options (decoder, draft, sampling, max_new_tokens, stop, step_end, max_step_tokens).
    """
    verifier = require_process_verifier(verifier, "particles")
    temperature = _check_options(n, weight_temperature, resampling, ess_threshold, gibbs_iterations, select)
    extract = answer_function(model, answer_fn) if select == "vote" else None
    compute = Compute()
    stats = {"resamples": 0}
    with compute.timed():
        stepper = Stepper(model, prompt, seed=seed, compute=compute, fork_cache=fork_cache, **options)
        rounds = max_rounds(stepper, max_steps)
        generator = make_generators(generator_seed(seed, -1), [0])[0]  # resampling draws
        reference = None
        for _ in range(gibbs_iterations):
            particles, weights, scores = _sweep(stepper, verifier, n, temperature=temperature, scheme=resampling,
                                                ess_threshold=float(ess_threshold), rounds=rounds,
                                                generator=generator, reference=reference, stats=stats)
            reference = particles[int(torch.multinomial(weights.float(), 1, generator=generator))]
    candidates = [stepper.candidate(p, float(s), i, weight=float(w))
                  for i, (p, s, w) in enumerate(zip(particles, scores.tolist(), weights.tolist()))]
    if select == "weight":
        best = max(candidates, key=lambda c: (c.meta["weight"], -c.meta["index"]))
    elif select == "sample":
        best = candidates[int(torch.multinomial(weights.float(), 1, generator=generator))]
    else:
        answers = [extract(c.output) for c in candidates]
        winner, _ = vote_by_answer(candidates, answers, [c.meta["weight"] for c in candidates])
        pool = [c for c, a in zip(candidates, answers) if a == winner] or candidates
        best = max(pool, key=lambda c: (c.meta["weight"], -c.meta["index"]))
    config = stepper.config("particles", n, verifier, weight_temperature=temperature, resampling=resampling,
                            ess_threshold=float(ess_threshold), gibbs_iterations=gibbs_iterations, select=select,
                            **stats)
    return finish(best, candidates, compute, config, abstain_below)


__all__ = ["RESAMPLERS", "effective_sample_size", "multinomial_resample", "particle_filter", "resample",
           "systematic_resample"]
