"""Noise search on the zoo's diffusers model (zoo:digits through the image Denoiser): NFE accounting
against the model's own counter, re-rendering candidates from their recorded seeds and paths, and the
verifier raising its own score with budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ponder
from ponder import zoo
from ponder.errors import InputError
from ponder.search.core import Denoiser
from ponder.search.scaling import get_strategy
from ponder.search.scaling.noise_paths import paths_nfe, render_path
from ponder.search.scaling.noise_zero_order import chain_noise


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """zoo:digits when its weights are built, else the smoke recipe's model (the rules need no quality)."""
    if zoo.entry("digits").built:
        return ponder.load("image", "zoo:digits")
    folder = tmp_path_factory.mktemp("zoo")
    zoo.train("digits", out_dir=folder, smoke=True, log=lambda *a: None)
    return ponder.load("image", folder / "digits")


@pytest.fixture(scope="module")
def classifier():
    return ponder.load_verifier("image", "classifier")


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_zoo_model_is_a_denoiser(digits_model):
    assert isinstance(digits_model, Denoiser)


@pytest.mark.parametrize("strategy,options,expected", [
    ("noise-random", {"n": 3}, 3 * 4),
    ("noise-zero-order", {"n": 2, "iterations": 2}, 2 * 2 * 4),
    ("noise-paths", {"n": 2, "branches": 2, "start": 2}, paths_nfe(2, 2, 4, 2, 1, 2)),
])
def test_nfe_accounting_matches_the_models_counter(digits_model, classifier, strategy, options, expected):
    before = digits_model.nfe
    res = get_strategy(strategy)(digits_model, "4", classifier, seed=0, steps=4, **options)
    assert res.compute.nfe == expected == digits_model.nfe - before
    assert res.compute.verifier_calls > 0 and res.config["verifier"] == "classifier"
    assert all(0.0 <= c.score <= 1.0 for c in res.candidates)  # class probabilities


def test_random_candidate_rerenders_from_its_seed(digits_model, classifier):
    res = get_strategy("noise-random")(digits_model, "2", classifier, n=3, seed=5, steps=3)
    best = res.best
    x_T = digits_model.noise([torch.Generator().manual_seed(best.seed)])
    again = digits_model.decode(digits_model.sample(x_T, digits_model.condition("2", 1), 3))[0]
    assert np.abs(_pixels(again) - _pixels(best.output)).max() <= 1


def test_zero_order_and_paths_candidates_rerender(digits_model, classifier):
    zo = get_strategy("noise-zero-order")(digits_model, "5", classifier, n=2, seed=1, steps=3, iterations=2)
    x_T = chain_noise(digits_model, 1, zo.best.meta["chain"], zo.config["step_size"])
    again = digits_model.decode(digits_model.sample(x_T, digits_model.condition("5", 1), 3))[0]
    assert np.abs(_pixels(again) - _pixels(zo.best.output)).max() <= 1
    paths = get_strategy("noise-paths")(digits_model, "5", classifier, n=2, seed=1, steps=4, branches=2)
    x = render_path(digits_model, "5", paths.best.meta["path"], seed=1, steps=4, start=paths.config["start"])
    assert np.abs(_pixels(digits_model.decode(x)[0]) - _pixels(paths.best.output)).max() <= 1


def test_more_random_noises_never_lower_the_verifiers_best(digits_model, classifier):
    search = get_strategy("noise-random")
    bests = [search(digits_model, "9", classifier, n=n, seed=3, steps=3).best.score for n in (1, 3, 6)]
    assert bests[0] <= bests[1] <= bests[2]


def test_a_prompt_that_is_no_class_fails_before_any_work(digits_model, classifier):
    before = digits_model.nfe
    for strategy in ("noise-random", "noise-zero-order", "noise-paths"):
        with pytest.raises(InputError, match="not a class"):
            get_strategy(strategy)(digits_model, "cat", classifier, n=2, seed=0, steps=2)
    assert digits_model.nfe == before
