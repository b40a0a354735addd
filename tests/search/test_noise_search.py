"""Noise search (Ma et al. 2025) on an analytic Gaussian denoiser: the rules, NFE accounting, seeds.

The toy data distribution is x0 ~ N(mu, s0^2 I) in 6 dimensions, so E[x0 | x_t] is exact and the
deterministic DDIM step needs no network. The verifier scores a sample by its first coordinate.
"""

from __future__ import annotations

import math

import pytest
import torch

from ponder.errors import ConfigError
from ponder.search.core import (
    Compute,
    CountsNFE,
    DecodesTensor,
    Denoiser,
    Describes,
    DifferentiableVerifier,
    HasDefaultSteps,
    Verifier,
)
from ponder.search.scaling import get_strategy
from ponder.search.scaling.noise_paths import noise_paths, path_rounds, paths_nfe, render_path
from ponder.search.scaling.noise_random import noise_random
from ponder.search.scaling.noise_zero_order import chain_noise, neighbours, noise_zero_order

DIM = 6


class GaussianDenoiser:
    """x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps with x0 ~ N(mu, s0^2 I): exact x0 prediction."""

    def __init__(self, s0: float = 0.7):
        self.s0 = s0
        self.nfe = 0  # network-evaluation counter the strategies' own accounting must match
        self.default_steps = 6
        self.grad_modes: set[bool] = set()  # torch.is_grad_enabled() at every evaluation

    def condition(self, prompt, n):
        return torch.full((DIM,), float(prompt))  # mu

    def timesteps(self, steps):
        return [1.0 - i / steps for i in range(steps + 1)]

    def noise(self, generators):
        return torch.cat([torch.randn((1, DIM), generator=g) for g in generators])

    @staticmethod
    def _alpha_sigma(t):
        return math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)

    def predict_x0(self, x_t, t, cond):
        self.nfe += x_t.shape[0]
        self.grad_modes.add(torch.is_grad_enabled())
        a, s = self._alpha_sigma(t)
        gain = a * self.s0 ** 2 / (a * a * self.s0 ** 2 + s * s)
        return cond + gain * (x_t - a * cond)  # [B, DIM]

    def step(self, x_t, t, t_next, cond):
        a, s = self._alpha_sigma(t)
        x0 = self.predict_x0(x_t, t, cond)
        eps = (x_t - a * x0) / s
        a2, s2 = self._alpha_sigma(t_next)
        return a2 * x0 + s2 * eps

    def renoise(self, x, t_from, t_to, noise):
        a1, s1 = self._alpha_sigma(t_from)
        a2, s2 = self._alpha_sigma(t_to)
        r = a2 / a1
        return r * x + math.sqrt(max(s2 * s2 - r * r * s1 * s1, 0.0)) * noise

    def decode(self, x0):
        return list(x0)  # one [DIM] tensor per row


class FirstCoordinate:
    """Scores a sample by its first coordinate; remembers every batch it scored."""

    name = "first-coordinate"

    def __init__(self):
        self.calls: list[list[float]] = []

    def score(self, prompt, outputs):
        scores = torch.stack([o[0] for o in outputs])
        self.calls.append(scores.tolist())
        return scores


class Uncounted:
    """The toy without an NFE counter or default steps: only the `Denoiser` protocol itself."""

    def __init__(self):
        self.inner = GaussianDenoiser()
        for name in ("condition", "timesteps", "noise", "step", "predict_x0", "renoise", "decode"):
            setattr(self, name, getattr(self.inner, name))


class SumOfSquares:
    """A differentiable verifier: minus the squared norm, on outputs or on output tensors."""

    name = "sum-of-squares"

    def score(self, prompt, outputs):
        return self.score_tensor(prompt, torch.stack(list(outputs)))

    def score_tensor(self, prompt, x):
        return -x.flatten(1).square().sum(1)  # [N]


def test_toy_is_a_denoiser():
    assert isinstance(GaussianDenoiser(), Denoiser)


def test_capabilities_are_protocols_checked_by_isinstance():
    toy = GaussianDenoiser()
    assert isinstance(toy, CountsNFE) and isinstance(toy, HasDefaultSteps)
    assert not isinstance(toy, Describes) and not isinstance(toy, DecodesTensor)
    bare = Uncounted()
    assert isinstance(bare, Denoiser) and not isinstance(bare, CountsNFE) and not isinstance(bare, HasDefaultSteps)
    assert isinstance(SumOfSquares(), DifferentiableVerifier) and isinstance(SumOfSquares(), Verifier)
    assert not isinstance(FirstCoordinate(), DifferentiableVerifier)
    x = torch.ones(2, DIM, requires_grad=True)
    SumOfSquares().score_tensor(None, x).sum().backward()
    assert torch.equal(x.grad, torch.full((2, DIM), -2.0))


def test_a_denoiser_without_counter_or_defaults_gets_rows_times_steps_and_twenty_steps():
    res = noise_random(Uncounted(), 0.0, FirstCoordinate(), n=3, seed=0)
    assert res.config["steps"] == 20 and res.compute.nfe == 3 * 20
    paths = noise_paths(Uncounted(), 0.0, FirstCoordinate(), n=2, seed=0, steps=6, branches=2)
    assert paths.compute.nfe == paths_nfe(2, 2, 6, paths.config["start"], 1, 2)
    assert res.config["model"] == "Uncounted" and "model_info" not in res.config


@pytest.mark.parametrize("strategy", ["sample", "best-of-n", "noise-random", "noise-zero-order", "noise-paths"])
def test_strategies_run_their_denoising_without_gradients_and_record_no_diversity(strategy):
    model = GaussianDenoiser()
    options = {"n": 2, "seed": 0, "steps": 3}
    if strategy == "noise-paths":
        options["steps"] = 4
    res = get_strategy(strategy)(model, 0.0, FirstCoordinate(), **options)
    assert model.grad_modes == {False}
    assert "diversity" not in res.config  # a modality's measure; the SDK adds it


def test_compute_counts_backward_passes_in_sums_and_json():
    total = Compute(nfe=4, backward_passes=2)
    total += Compute(backward_passes=3, seconds=0.5)
    assert total.backward_passes == 5 and total.nfe == 4
    assert (total + Compute(backward_passes=1)).backward_passes == 6
    assert total.to_dict() == {"model_calls": 0, "draft_calls": 0, "tokens": 0, "nfe": 4, "verifier_calls": 0,
                               "backward_passes": 5, "seconds": 0.5}


def test_strategies_are_registered_by_their_cli_names():
    assert get_strategy("noise-random") is noise_random
    assert get_strategy("noise_zero_order") is noise_zero_order
    assert get_strategy("noise-paths") is noise_paths


# ---- random search -------------------------------------------------------------------------------


def test_random_search_picks_the_top_score_and_counts_n_times_steps_nfe():
    model, verifier = GaussianDenoiser(), FirstCoordinate()
    res = noise_random(model, 0.5, verifier, n=5, seed=3, steps=4)
    scores = [c.score for c in res.candidates]
    assert res.best.score == max(scores)
    assert res.compute.nfe == 5 * 4 == model.nfe
    assert res.compute.verifier_calls == 5
    assert len({c.seed for c in res.candidates}) == 5


def test_random_search_is_reproducible_from_its_seed():
    a = noise_random(GaussianDenoiser(), 0.0, FirstCoordinate(), n=6, seed=7, steps=3)
    b = noise_random(GaussianDenoiser(), 0.0, FirstCoordinate(), n=6, seed=7, steps=3)
    for ca, cb in zip(a.candidates, b.candidates):
        assert torch.allclose(ca.output, cb.output, atol=1e-6) and ca.seed == cb.seed
    fewer = noise_random(GaussianDenoiser(), 0.0, FirstCoordinate(), n=3, seed=7, steps=3)
    for cf, ca in zip(fewer.candidates, a.candidates):  # candidate i does not depend on the batch
        assert torch.allclose(cf.output, ca.output, atol=1e-6)
    c = noise_random(GaussianDenoiser(), 0.0, FirstCoordinate(), n=6, seed=8, steps=3)
    assert not torch.allclose(a.best.output, c.best.output)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_random_search_budget_never_lowers_the_best_score(seed):
    bests = [noise_random(GaussianDenoiser(), 0.0, FirstCoordinate(), n=n, seed=seed, steps=3).best.score
             for n in (1, 2, 4, 8, 16)]
    assert all(later >= earlier for earlier, later in zip(bests, bests[1:]))
    assert bests[-1] > bests[0]  # 16 Gaussian draws beat the first one at these seeds


# ---- zero-order search ---------------------------------------------------------------------------


@pytest.mark.parametrize("step_size", [0.3, 1.0, 1.9])
def test_neighbours_lie_on_the_pivot_sphere_at_distance_lambda_times_its_norm(step_size):
    model = GaussianDenoiser()
    pivot = model.noise([torch.Generator().manual_seed(0)])
    ys = neighbours(model, pivot, 0, [1, 2, 3], step_size)
    norm = pivot.norm().item()
    assert torch.allclose((ys - pivot).norm(dim=1), torch.full((3,), step_size * norm), atol=1e-4)
    assert torch.allclose(ys.norm(dim=1), torch.full((3,), norm), atol=1e-4)  # no drift off the shell
    assert not torch.allclose(ys[0], ys[1])  # each index its own direction


def test_zero_order_moves_the_pivot_only_on_improvement():
    model, verifier = GaussianDenoiser(), FirstCoordinate()
    res = noise_zero_order(model, 0.0, verifier, n=3, seed=5, steps=3, iterations=6, step_size=0.8)
    pivot_score, pivot_index, expected_path = -math.inf, None, []
    for r in range(6):
        round_cands = [c for c in res.candidates if c.meta["round"] == r]
        top = max(round_cands, key=lambda c: c.score)
        if top.score > pivot_score:
            pivot_score, pivot_index = top.score, top.meta["index"]
        expected_path.append(pivot_index)
    assert res.config["pivot_path"] == expected_path
    assert res.best.meta["index"] == pivot_index and res.best.score == max(c.score for c in res.candidates)
    assert len(set(expected_path)) > 1  # the pivot moved at least once on this seed
    # every neighbour after round one perturbs the pivot that held before its round
    for r in range(1, 6):
        for c in (c for c in res.candidates if c.meta["round"] == r):
            assert c.meta["chain"][-2] == expected_path[r - 1]


def test_zero_order_counts_n_times_steps_times_iterations_and_rerenders_from_its_chain():
    model = GaussianDenoiser()
    res = noise_zero_order(model, 1.0, FirstCoordinate(), n=4, seed=2, steps=5, iterations=3, step_size=0.5)
    assert res.compute.nfe == 4 * 5 * 3 == model.nfe
    assert res.compute.verifier_calls == 12 and len(res.candidates) == 12
    x_T = chain_noise(model, 2, res.best.meta["chain"], 0.5)
    x0 = x_T
    times = model.timesteps(5)
    for t, t_next in zip(times[:-1], times[1:]):
        x0 = model.step(x0, t, t_next, model.condition(1.0, 1))
    assert torch.allclose(x0[0], res.best.output, atol=1e-5)


# ---- search over paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps,start,forward,backward,branches", [(6, 3, 1, 2, 2), (8, 2, 2, 3, 3), (4, 1, 1, 4, 2)])
def test_paths_nfe_equals_the_formula(steps, start, forward, backward, branches):
    model = GaussianDenoiser()
    res = noise_paths(model, 0.0, FirstCoordinate(), n=3, seed=1, steps=steps, branches=branches, start=start,
                      forward=forward, backward=backward)
    assert res.compute.nfe == model.nfe == paths_nfe(3, branches, steps, start, forward, backward)
    rounds = path_rounds(steps, start, forward, backward)
    assert rounds[-1][1] == steps
    assert res.compute.verifier_calls == 3 * branches * len(rounds)


def test_paths_keeps_the_top_n_every_round_and_returns_them_ranked():
    verifier = FirstCoordinate()
    res = noise_paths(GaussianDenoiser(), 0.0, verifier, n=3, seed=4, steps=8, branches=3, start=2,
                      forward=1, backward=2)
    assert len(res.candidates) == 3
    for r, round_scores in enumerate(verifier.calls):
        assert len(round_scores) == 9  # 3 kept x 3 branches
        threshold = sorted(round_scores, reverse=True)[2]
        for c in res.candidates:
            assert c.meta["round_scores"][r] >= threshold  # every ancestor was among the round's top 3
    final = sorted(verifier.calls[-1], reverse=True)[:3]
    assert [c.score for c in res.candidates] == pytest.approx(final)
    assert res.best is res.candidates[0]


def test_paths_candidate_rerenders_from_its_recorded_path():
    model = GaussianDenoiser()
    res = noise_paths(model, 0.5, FirstCoordinate(), n=2, seed=9, steps=6, branches=2)
    for c in res.candidates:
        x = render_path(model, 0.5, c.meta["path"], seed=9, steps=6, start=res.config["start"])
        assert torch.allclose(x[0], c.output, atol=1e-5)


def test_paths_with_more_branches_raises_the_toy_score():
    one = noise_paths(GaussianDenoiser(), 0.0, FirstCoordinate(), n=2, seed=0, steps=6, branches=1).best.score
    many = noise_paths(GaussianDenoiser(), 0.0, FirstCoordinate(), n=2, seed=0, steps=6, branches=8).best.score
    assert many > one


# ---- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,kwargs,match", [
    (noise_random, {"n": 0}, "n must be"),
    (noise_random, {"n": 2, "steps": 0}, "steps must be"),
    (noise_random, {"n": 2, "temperature": 1.0}, "no option 'temperature'"),
    (noise_zero_order, {"n": 1}, "n >= 2"),
    (noise_zero_order, {"n": 3, "step_size": 0.0}, "step_size"),
    (noise_zero_order, {"n": 3, "step_size": 2.0}, "step_size"),
    (noise_zero_order, {"n": 3, "step_size": float("nan")}, "step_size"),
    (noise_zero_order, {"n": 3, "iterations": 0}, "iterations must be"),
    (noise_paths, {"n": 2, "forward": 2, "backward": 2}, "backward"),
    (noise_paths, {"n": 2, "steps": 6, "start": 6}, "start must be"),
    (noise_paths, {"n": 2, "steps": 6, "start": 0, "forward": 1}, "start must be"),
    (noise_paths, {"n": 2, "branches": 0}, "branches must be"),
])
def test_bad_options_are_one_config_error_each(fn, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fn(GaussianDenoiser(), 0.0, FirstCoordinate(), seed=0, **kwargs)


@pytest.mark.parametrize("fn", [noise_random, noise_zero_order, noise_paths])
def test_noise_search_needs_a_verifier_and_a_denoiser(fn):
    with pytest.raises(ConfigError, match="verifier"):
        fn(GaussianDenoiser(), 0.0, None, n=2)
    with pytest.raises(ConfigError, match="Denoiser"):
        fn(object(), 0.0, FirstCoordinate(), n=2)
