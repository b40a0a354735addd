"""Particle filtering: resampling is unbiased and the filter samples the target posterior.

In the spirit of denotational validation of SMC: on a toy chain with enumerable outputs and an
exact likelihood as the weight, outputs drawn by final weight converge to p(x) L(x) / Z (seeded
chi-square test), and the same test rejects plain sampling (so it can fail).
"""

import math

import pytest
import torch
from toys import FnVerifier, all_strings, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.scaling import particle_filter, sample
from ponder.search.scaling.particle_filter import (
    effective_sample_size,
    multinomial_resample,
    systematic_resample,
)

WEIGHTS = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("resampler", [multinomial_resample, systematic_resample])
def test_resampling_is_unbiased(resampler):
    gen = torch.Generator().manual_seed(0)
    draws, count = 4000, 8
    counts = torch.zeros(len(WEIGHTS))
    for _ in range(draws):
        counts += torch.bincount(resampler(WEIGHTS, count, gen), minlength=len(WEIGHTS))
    mean = counts / draws
    expected = count * WEIGHTS
    # multinomial per-draw sd of a count is sqrt(n w (1 - w)) <= 1.5; 4000 draws: sd of the mean < 0.025
    assert torch.allclose(mean, expected, atol=0.1), (mean, expected)


def test_systematic_gives_floor_or_ceil_copies():
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        counts = torch.bincount(systematic_resample(WEIGHTS, 8, gen), minlength=4).double()
        nw = 8 * WEIGHTS.double()
        assert torch.all((counts >= nw.floor()) & (counts <= nw.ceil())), counts
        assert counts.sum() == 8


def test_effective_sample_size_bounds():
    assert effective_sample_size(torch.full((8,), 1 / 8)) == pytest.approx(8)
    assert effective_sample_size(torch.tensor([1.0, 0, 0])) == pytest.approx(1)


def _likelihood(text: str) -> float:
    # a strong, non-multiplicative tilt: prefers many a's, and "b" at the end
    return (1 + 3 * text.count("a")) ** 2 * (2.0 if text.endswith("b") else 1.0)


def _posterior(model, length):
    outs = all_strings(length)
    w = [model.prob(x) * _likelihood(x) for x in outs]
    z = sum(w)
    return outs, [v / z for v in w]


LOG_L = FnVerifier(lambda text: math.log(_likelihood(text)))


@pytest.mark.parametrize("resampling,ess", [("systematic", 1.0), ("multinomial", 0.5), ("systematic", 0.0)])
def test_particle_filter_samples_the_posterior(toy, resampling, ess):
    length, runs = 3, 300
    outs, post = _posterior(toy, length)
    counts = dict.fromkeys(outs, 0)
    for seed in range(runs):
        res = particle_filter(toy, "p", LOG_L, n=32, seed=seed, weight_temperature=1.0, resampling=resampling,
                              ess_threshold=ess, select="sample", max_new_tokens=length)
        counts[res.best.output] += 1
    assert chi_square_pvalue([counts[x] for x in outs], [runs * p for p in post]) > 1e-3


def test_chi_square_rejects_plain_sampling(toy):
    """The posterior test has power: samples of the prior fail it."""
    length, runs = 3, 300
    outs, post = _posterior(toy, length)
    res = sample(toy, "p", n=runs, seed=0, max_new_tokens=length)
    counts = dict.fromkeys(outs, 0)
    for c in res.candidates:
        counts[c.output] += 1
    assert chi_square_pvalue([counts[x] for x in outs], [runs * p for p in post]) < 1e-6


def test_without_resampling_final_weights_are_softmax_of_scores(toy):
    scores = FnVerifier(lambda text: text.count("a") * 0.7)
    res = particle_filter(toy, "p", scores, n=8, seed=3, weight_temperature=0.5, ess_threshold=0.0,
                          max_new_tokens=4)
    s = torch.tensor([c.score for c in res.candidates])
    w = torch.tensor([c.meta["weight"] for c in res.candidates])
    assert torch.allclose(w, torch.softmax(s / 0.5, 0), atol=1e-6)
    assert res.config["resamples"] == 0
    assert res.best.meta["weight"] == pytest.approx(max(w.tolist()))


def test_particle_gibbs_keeps_the_reference_and_spends_its_budget(toy):
    verifier = FnVerifier(lambda text: text.count("a"))
    res = particle_filter(toy, "p", verifier, n=4, seed=0, gibbs_iterations=3, ess_threshold=1.0,
                          weight_temperature=1.0, max_new_tokens=3)
    assert res.config["gibbs_iterations"] == 3 and len(res.candidates) == 4
    # 3 sweeps x 3 rounds; sweeps after the first decode 3 free particles, not 4
    one = particle_filter(toy, "p", verifier, n=4, seed=0, ess_threshold=1.0, weight_temperature=1.0,
                          max_new_tokens=3)
    assert res.compute.tokens == one.compute.tokens + 2 * 3 * 3


def test_particles_are_reproducible_and_greedy_weights_pick_the_best(toy):
    verifier = FnVerifier(lambda text: text.count("a"))
    a = particle_filter(toy, "p", verifier, n=16, seed=5, weight_temperature=0.05, max_new_tokens=4)
    b = particle_filter(toy, "p", verifier, n=16, seed=5, weight_temperature=0.05, max_new_tokens=4)
    assert [c.output for c in a.candidates] == [c.output for c in b.candidates]
    assert a.best.output == "aaaa"  # a near-greedy filter concentrates on the highest score


@pytest.mark.parametrize("bad", [0, -1.0, float("inf")])
def test_non_positive_weight_temperature_is_one_clear_error(toy, bad):
    with pytest.raises(ConfigError, match="weight_temperature"):
        particle_filter(toy, "p", LOG_L, n=4, weight_temperature=bad, max_new_tokens=2)


def test_bad_particle_options(toy):
    from toys import OutcomeOnly

    with pytest.raises(ConfigError, match="process verifier"):
        particle_filter(toy, "p", OutcomeOnly(), n=4, max_new_tokens=2)
    with pytest.raises(ConfigError, match="resampling"):
        particle_filter(toy, "p", LOG_L, n=4, resampling="stratified", max_new_tokens=2)
    with pytest.raises(ConfigError, match="ess_threshold"):
        particle_filter(toy, "p", LOG_L, n=4, ess_threshold=1.5, max_new_tokens=2)
    with pytest.raises(ConfigError, match="n >= 2"):
        particle_filter(toy, "p", LOG_L, n=1, gibbs_iterations=2, max_new_tokens=2)
    with pytest.raises(ConfigError, match="select"):
        particle_filter(toy, "p", LOG_L, n=2, select="best", max_new_tokens=2)


def test_sampling_temperature_reaches_the_steps(toy):
    greedy = particle_filter(toy, "p", LOG_L, n=4, seed=0, sampling=SamplingParams(temperature=0),
                             max_new_tokens=3)
    assert {c.output for c in greedy.candidates} == {"aaa"}  # argmax chain: a -> a -> a
