"""Each scaling strategy's rule, pinned on the toy chain of `toys.py` (outputs and scores by hand)."""

import pytest
import torch
from toys import FnVerifier, OutcomeOnly

from ponder.errors import ConfigError
from ponder.search.core import Candidate
from ponder.search.scaling import (
    STRATEGIES,
    adaptive,
    beam_search,
    best_of_n,
    compute_optimal,
    coverage,
    diverse_beam,
    dvts,
    get_strategy,
    pass_at_k,
    rpc,
    sample,
    self_consistency,
    weighted_best_of_n,
    worst_of_n,
)
from ponder.search.scaling.best_of_n import vote_by_answer
from ponder.search.scaling.compute_optimal import difficulty_level, fit_policy
from ponder.search.scaling.rpc import prune_mask, two_means_threshold

COUNT_A = FnVerifier(lambda text: text.count("a") / max(1, len(text)), name="share-a")


def outs(res):
    return [c.output for c in res.candidates]


def test_every_strategy_is_registered_under_its_cli_name():
    assert set(STRATEGIES) == {"sample", "best-of-n", "weighted-best-of-n", "worst-of-n", "self-consistency", "rpc",
                               "beam", "dvts", "diverse-beam", "particles", "compute-optimal", "adaptive",
                               "noise-random", "noise-zero-order", "noise-paths", "ditto", "ditto-2", "rag"}
    assert get_strategy("best_of_n") is best_of_n
    with pytest.raises(ConfigError, match="allowed"):
        get_strategy("mcts")


# ---- best-of-N family ---------------------------------------------------------------------------


def test_best_and_worst_of_n_pick_the_extreme_scores_of_the_same_candidates(toy_eos):
    best = best_of_n(toy_eos, "p", COUNT_A, n=8, seed=1, max_new_tokens=6)
    worst = worst_of_n(toy_eos, "p", COUNT_A, n=8, seed=1, max_new_tokens=6)
    plain = sample(toy_eos, "p", n=8, seed=1, max_new_tokens=6)
    assert outs(best) == outs(worst) == outs(plain)  # same seeds, same candidates: only the choice differs
    scores = [c.score for c in best.candidates]
    assert best.best.score == max(scores) and worst.best.score == min(scores)
    assert best.best.meta["index"] == scores.index(max(scores))  # ties: lowest index
    assert best.compute.verifier_calls == 8 and best.compute.tokens == plain.compute.tokens


def test_vote_by_answer_sums_weights_and_breaks_ties_by_first_seen():
    cands = [Candidate(str(i), None, i) for i in range(5)]
    winner, totals = vote_by_answer(cands, ["x", "y", "y", None, "x"], [0.9, 0.5, 0.5, 5.0, 0.2])
    assert winner == "x" and totals == {"x": pytest.approx(1.1), "y": pytest.approx(1.0)}  # None never votes
    assert vote_by_answer(cands, ["x", "y", None, None, None], [1, 1, 0, 0, 0])[0] == "x"
    assert vote_by_answer(cands, [None] * 5, [1] * 5) == (None, {})


def test_weighted_best_of_n_picks_the_answer_with_the_largest_summed_score(toy_eos):
    res = weighted_best_of_n(toy_eos, "p", COUNT_A, n=12, seed=2, max_new_tokens=5)
    sums = {}
    for c in res.candidates:
        a = toy_eos.extract_answer(c.output)
        if a is not None:
            sums[a] = sums.get(a, 0.0) + c.score
    top = max(sums.values())
    assert toy_eos.extract_answer(res.best.output) in {a for a, s in sums.items() if s == pytest.approx(top)}
    same = [c.score for c in res.candidates if c.meta["answer"] == res.best.meta["answer"]]
    assert res.best.score == max(same)


def test_coverage_and_unbiased_pass_at_k():
    assert coverage([False, False, True], 2) == 0.0 and coverage([False, False, True], 3) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(4, 0, 3) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    # the estimator is the mean coverage over all k-subsets
    import itertools

    flags = [True, False, False, True, False]
    subsets = list(itertools.combinations(flags, 3))
    assert pass_at_k(5, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ConfigError):
        pass_at_k(3, 1, 4)


def test_selection_strategies_need_a_verifier(toy):
    with pytest.raises(ConfigError, match="verifier"):
        best_of_n(toy, "p", None, n=2, max_new_tokens=2)


def test_abstention_returns_no_best_below_the_threshold(toy):
    res = best_of_n(toy, "p", FnVerifier(lambda t: 0.2), n=3, max_new_tokens=2, abstain_below=0.5)
    assert res.best is None and res.config["abstained"] and len(res.candidates) == 3
    assert best_of_n(toy, "p", FnVerifier(lambda t: 0.7), n=3, max_new_tokens=2, abstain_below=0.5).best


# ---- voting -------------------------------------------------------------------------------------


def test_self_consistency_returns_the_majority_answer(toy_eos):
    res = self_consistency(toy_eos, "p", n=15, seed=0, max_new_tokens=5)
    answers = [toy_eos.extract_answer(c.output) for c in res.candidates]
    counts = {a: answers.count(a) for a in set(answers) if a is not None}
    assert counts[res.best.meta["answer"]] == max(counts.values())
    assert res.best.score == pytest.approx(max(counts.values()) / 15)
    assert res.best is next(c for c in res.candidates if c.meta["answer"] == res.best.meta["answer"])


def test_two_means_and_reasoning_pruning():
    probs = [0.9, 0.85, 0.88, 0.2, 0.25]
    cut = two_means_threshold(probs)
    assert 0.25 < cut < 0.85
    assert prune_mask(probs, min_gap=0.05) == [True, True, True, False, False]
    assert prune_mask([0.5, 0.52, 0.51], min_gap=0.05) == [True] * 3  # no clear low cluster: keep all


def test_rpc_votes_with_inverse_perplexity_over_distinct_kept_paths(toy_eos):
    import math

    res = rpc(toy_eos, "p", n=12, seed=4, max_new_tokens=5, prune=False)
    totals, seen = {}, set()
    for c in res.candidates:
        p = math.exp(c.meta["logprob"] / max(1, c.meta["num_tokens"]))
        assert c.meta["path_probability"] == pytest.approx(p)
        a = c.meta["answer"]
        if a is not None and c.output not in seen:
            totals[a] = totals.get(a, 0.0) + p
        seen.add(c.output)
    assert res.best.meta["answer"] == max(totals, key=totals.get)
    pruned = rpc(toy_eos, "p", n=12, seed=4, max_new_tokens=5)
    assert pruned.config["pruned"] == sum(c.meta["pruned"] for c in pruned.candidates)


# ---- step-level search --------------------------------------------------------------------------


def test_beam_keeps_exactly_the_top_beams_by_prm_each_round(toy):
    res = beam_search(toy, "p", COUNT_A, n=8, beam_width=2, seed=0, max_new_tokens=4, trace=True)
    for rnd in res.config["trace"]:
        open_scores = [(s, i) for i, (s, d) in enumerate(zip(rnd["scores"], rnd["done"])) if not d]
        expected = [i for _, i in sorted(open_scores, key=lambda t: (-t[0], t[1]))[:4]]
        assert rnd["kept"] == expected
    assert len(res.candidates) == 8 and all(len(c.output) == 4 for c in res.candidates)
    assert res.best.score == max(c.score for c in res.candidates)


def test_beam_search_prefers_high_scores_over_sampling(toy):
    verifier = FnVerifier(lambda text: text.count("b") / max(1, len(text)))  # the chain prefers "a"
    beam = beam_search(toy, "p", verifier, n=8, beam_width=2, seed=0, max_new_tokens=5)
    plain = best_of_n(toy, "p", verifier, n=8, seed=0, max_new_tokens=5)
    assert beam.best.output == "bbbbb"
    assert sum(c.score for c in beam.candidates) > sum(c.score for c in plain.candidates)


def test_dvts_runs_independent_subtrees_with_one_answer_each(toy):
    res = dvts(toy, "p", COUNT_A, n=8, beam_width=2, seed=0, max_new_tokens=3, trace=True)
    assert res.config["subtrees"] == 4
    for rnd in res.config["trace"][:-1]:
        assert len(rnd["kept"]) <= 4  # one continuing partial per subtree
    answers = [c for c in res.candidates if c.meta["subtree_answer"]]
    assert sorted(c.meta["subtree"] for c in answers) == [0, 1, 2, 3]
    assert res.best in answers and res.best.score == max(c.score for c in answers)


def test_diverse_beam_penalises_steps_earlier_groups_chose(toy):
    flat = FnVerifier(lambda text: 1.0)  # every partial ties: only the penalty separates them
    res = diverse_beam(toy, "p", flat, n=8, beam_width=2, groups=2, diversity=10.0, seed=0, max_new_tokens=3,
                       trace=True)
    assert all(len(r["kept"]) == 4 for r in res.config["trace"][:-1])  # 2 per group every round
    assert sorted(c.meta["group"] for c in res.candidates) == [0] * 4 + [1] * 4
    # penalty 10 dwarfs the tied scores, so group 1 keeps steps group 0 did not wherever it can;
    # on this seeded case no output of one group is an output of the other
    g0 = {c.output for c in res.candidates if c.meta["group"] == 0}
    g1 = {c.output for c in res.candidates if c.meta["group"] == 1}
    assert not g0 & g1


def test_diverse_select_rule_on_a_hand_made_round():
    from ponder.search.scaling.diverse_beam import diverse_select
    from ponder.search.scaling.steps import Partial

    parts = [Partial(ids=[t], bounds=[1], origin=o) for t, o in [(0, 0), (1, 0), (0, 1), (1, 1)]]
    scored = list(zip(parts, [0.9, 0.5, 0.8, 0.6]))
    pick = diverse_select(scored, groups=2, per_group=1, diversity=0.5, last_step=lambda p: tuple(p.ids))
    assert [p.ids for p in pick] == [[0], [1]]  # group 1: 0.8 - 0.5 < 0.6
    pick = diverse_select(scored, groups=2, per_group=1, diversity=0.0, last_step=lambda p: tuple(p.ids))
    assert [p.ids for p in pick] == [[0], [0]]


@pytest.mark.parametrize("fn", [beam_search, dvts, diverse_beam])
def test_beam_budgets_must_be_multiples_of_the_width(toy, fn):
    with pytest.raises(ConfigError, match="multiple of beam_width"):
        fn(toy, "p", COUNT_A, n=6, beam_width=4, max_new_tokens=2)
    with pytest.raises(ConfigError, match="smaller than beam_width"):
        fn(toy, "p", COUNT_A, n=2, beam_width=4, max_new_tokens=2)


@pytest.mark.parametrize("name", ["beam", "dvts", "diverse-beam", "particles"])
def test_step_strategies_refuse_outcome_only_verifiers(toy, name):
    with pytest.raises(ConfigError, match="process verifier"):
        get_strategy(name)(toy, "p", OutcomeOnly(), n=4, max_new_tokens=2)
    with pytest.raises(ConfigError, match="process verifier"):
        get_strategy(name)(toy, "p", None, n=4, max_new_tokens=2)


def test_diverse_beam_groups_must_divide_the_beams(toy):
    with pytest.raises(ConfigError, match="groups"):
        diverse_beam(toy, "p", COUNT_A, n=6, beam_width=2, groups=2, max_new_tokens=2)


# ---- compute-optimal and adaptive ---------------------------------------------------------------


def test_difficulty_levels_and_fitted_policy():
    assert [difficulty_level(s) for s in (0.9, 0.7, 0.5, 0.3, 0.1)] == [1, 2, 3, 4, 5]
    assert fit_policy({1: {"best-of-n": 0.9, "beam": 0.8}, 2: {"best-of-n": 0.3, "beam": 0.5}}) == {
        1: "best-of-n", 2: "beam"}


@pytest.mark.parametrize("score,level,chosen",
                         [(0.95, 1, "best-of-n"), (0.5, 3, "beam"), (0.05, 5, "weighted-best-of-n")])
def test_compute_optimal_routes_by_difficulty(toy, score, level, chosen):
    res = compute_optimal(toy, "p", FnVerifier(lambda t: score), n=8, probe=4, beam_width=2, seed=0, max_new_tokens=3)
    assert res.config["difficulty_level"] == level and res.config["chosen"] == chosen
    assert sum(c.meta.get("probe", False) for c in res.candidates) == 4
    if chosen != "beam":  # probes are reused: the result is that strategy at budget n
        assert outs(res) == outs(sample(toy, "p", n=8, seed=0, max_new_tokens=3))


def test_compute_optimal_budget_and_policy_errors(toy):
    with pytest.raises(ConfigError, match="must exceed probe"):
        compute_optimal(toy, "p", COUNT_A, n=4, probe=4, max_new_tokens=2)
    with pytest.raises(ConfigError, match="policy"):
        compute_optimal(toy, "p", COUNT_A, n=8, policy={1: "mcts"}, max_new_tokens=2)


def test_adaptive_stops_once_confident_and_reports_samples_used(toy):
    sure = adaptive(toy, "p", FnVerifier(lambda t: 1.0), n=16, confidence=0.9, max_new_tokens=3)
    assert sure.config["samples_used"] == 1 and len(sure.candidates) == 1
    never = adaptive(toy, "p", FnVerifier(lambda t: 0.0), n=16, confidence=0.9, max_new_tokens=3)
    assert never.config["samples_used"] == 16
    # the drawn candidates are exactly sample's first ones (same seeds)
    assert outs(never) == outs(sample(toy, "p", n=16, seed=0, max_new_tokens=3))


def test_adaptive_vote_mode(toy):
    res = adaptive(toy, "p", None, n=32, confidence=0.5, min_samples=4, max_new_tokens=2)
    used = res.config["samples_used"]
    assert 4 <= used <= 32
    share = max(c.score for c in res.candidates)
    assert share >= 0.5 or used == 32
    with pytest.raises(ConfigError, match="vote share"):
        adaptive(toy, "p", None, n=4, confidence=2.0, max_new_tokens=2)


def test_strategies_count_compute_once(toy):
    res = beam_search(toy, "p", COUNT_A, n=4, beam_width=2, seed=0, max_new_tokens=3)
    assert res.compute.model_calls == 3 and res.compute.tokens == 12  # 3 rounds x one prefill; 4 rows x 3
    assert res.compute.verifier_calls == 12
    assert 0 < res.compute.seconds < 60
    assert torch.is_tensor(COUNT_A.score("p", ["ab"]))
