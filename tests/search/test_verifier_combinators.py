"""Verifier combinators: ensembles, InfAlign calibration, fLaws' rates and N, self-evaluation."""

import math

import pytest
import torch
from toys import FnVerifier, OutcomeOnly

from ponder.errors import ConfigError
from ponder.search.verifiers import (
    Calibrated,
    Ensemble,
    ProcessEnsemble,
    SelfEvaluation,
    accuracy_bound,
    ensemble,
    estimate_rates,
    expected_accuracy,
    fp_aware_n,
    quantile_scores,
)
from ponder.search.verifiers.ensemble import ranks

LEN = FnVerifier(lambda t: len(t), name="len")
NEG_A = FnVerifier(lambda t: -t.count("a"), name="neg-a")


def test_ranks_are_mid_ranks_in_unit_interval():
    assert ranks(torch.tensor([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert ranks(torch.tensor([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]
    assert ranks(torch.tensor([7.0])).tolist() == [0.5]


def test_rank_and_mean_ensembles():
    outs = ["a", "bb", "aab"]
    rank = ensemble([LEN, NEG_A], method="rank")
    assert isinstance(rank, ProcessEnsemble)
    # len ranks [0, .5, 1]; -count(a) = [-1, 0, -2] ranks [.5, 1, 0]; mean [.25, .75, .5]
    assert rank.score("p", outs).tolist() == pytest.approx([0.25, 0.75, 0.5])
    assert rank.score_steps("p", outs).tolist() == pytest.approx([0.25, 0.75, 0.5])
    mean = ensemble([LEN, NEG_A], weights=[3, 1], method="mean")
    assert mean.score("p", outs).tolist() == pytest.approx([0.5, 1.5, 1.75])
    mixed = ensemble([LEN, OutcomeOnly()])
    assert type(mixed) is Ensemble and not hasattr(mixed, "score_steps")
    with pytest.raises(ConfigError, match="method"):
        Ensemble([LEN], method="max")
    with pytest.raises(ConfigError, match="weights"):
        Ensemble([LEN, NEG_A], weights=[1])


def test_calibration_maps_scores_to_reference_quantiles():
    ref = torch.tensor([0.1, 0.2, 0.2, 0.9])
    assert quantile_scores(torch.tensor([0.0, 0.2, 0.5, 1.0]), ref).tolist() == pytest.approx([0, 0.5, 0.75, 1])
    calls = []

    def reference(prompt):
        calls.append(prompt)
        return ["a", "ab", "abc", "abcd"]

    cal = Calibrated(LEN, reference)
    assert cal.score("p", ["abc", "zzzzz"]).tolist() == pytest.approx([0.625, 1.0])
    cal.score("p", ["a"])
    assert calls == ["p"] and cal.compute.verifier_calls == 4  # references drawn once per prompt


def test_calibrated_against_the_model_itself(toy):
    cal = Calibrated.against_model(FnVerifier(lambda t: t.count("a")), toy, m=16, max_new_tokens=3)
    q = cal.score("p", ["aaa", "bbb"]).tolist()
    assert q[0] > q[1] and 0 <= min(q) and max(q) <= 1
    assert cal.compute.tokens == 48


def test_flaws_accuracy_bound_and_fp_aware_n():
    p, tpr, fpr = 0.2, 0.9, 0.1
    bound = accuracy_bound(p, tpr, fpr)
    assert bound == pytest.approx(0.18 / (0.18 + 0.08))
    accs = [expected_accuracy(n, p, tpr, fpr) for n in (1, 2, 8, 64, 512)]
    assert accs == sorted(accs) and accs[-1] == pytest.approx(bound, rel=1e-6) and accs[0] == pytest.approx(0.18)
    n = fp_aware_n(p, tpr, fpr, tolerance=0.01)
    assert expected_accuracy(n, p, tpr, fpr) >= 0.99 * bound > expected_accuracy(n - 1, p, tpr, fpr)
    # a false positive costing more than a right answer gains: never answer
    assert fp_aware_n(p, tpr, fpr, fp_cost=3.0) == 0
    assert estimate_rates([0.9, 0.8, 0.3, 0.7, 0.1], [True, True, True, False, False], 0.5) == (2 / 3, 1 / 2)
    with pytest.raises(ConfigError, match="probability"):
        accuracy_bound(1.5, 0.5, 0.5)


def test_self_evaluation_is_the_inverse_perplexity_under_the_model(toy_eos):
    v = SelfEvaluation(toy_eos)
    outs = ["ab", "a", "bba", ""]
    got = v.score("p", outs).tolist()
    for text, score in zip(outs[:3], got):
        assert score == pytest.approx(toy_eos.prob(text) ** (1 / len(text)), rel=1e-5)
    assert got[3] == 0.0
    assert v.score_steps("p", ["ab"]).tolist() == pytest.approx(got[:1])
    assert math.isclose(sum(1 for s in got if 0 < s <= 1), 3)
