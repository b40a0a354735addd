"""Draft-length policies of spec-adaptive: HF's heuristic schedule and SmartSpec's goodput choice are
lossless (chi-square on an exact toy, greedy equals plain), follow their rules (heuristic +2/−1 per
row; goodput drafts nothing when verifying more tokens costs more than it gains, long drafts when
verification is flat), and the heuristic keeps batch rows equal to single rows."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import plain, spec_adaptive
from ponder.search.decoding.smartspec import GoodputSchedule, expected_tokens
from ponder.search.decoding.spec_adaptive import HeuristicSchedule

SAMPLES = 3000
NEW = 3  # 27 outcomes


@pytest.mark.parametrize("kw", [{"policy": "heuristic"}, {"policy": "goodput", "costs": [0.1, 1.0, 0.05]}],
                         ids=["heuristic", "goodput"])
def test_policies_match_target_distribution(kw):
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    stats: dict = {}
    out = spec_adaptive(target, [[0, 1]] * SAMPLES, sampling=SamplingParams(), max_new_tokens=NEW, draft=draft,
                        draft_len=2, generators=candidate_generators(0, range(SAMPLES)), stats=stats, **kw)
    assert stats["accepted"] > SAMPLES // 10
    counts = Counter(tuple(t) for t in out.tokens)
    assert chi_square_pvalue(counts, target.exact_distribution([0, 1], NEW, SamplingParams()), SAMPLES) > 1e-3


def test_greedy_equals_plain_and_heuristic_rows_are_batch_independent():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(target, prompts, sampling=greedy, max_new_tokens=20)
    for kw in ({"policy": "heuristic"}, {"policy": "goodput"}, {"policy": "goodput", "costs": [0.1, 1.0, 0.0]}):
        out = spec_adaptive(target, prompts, sampling=greedy, max_new_tokens=20, draft=draft, **kw)
        assert out.tokens == ref.tokens
    kw = dict(sampling=SamplingParams(), max_new_tokens=16, draft=draft, policy="heuristic", draft_len=2)
    batch = spec_adaptive(target, prompts, generators=candidate_generators(5, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = spec_adaptive(target, [prompt], generators=candidate_generators(5, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]


def test_heuristic_schedule_grows_by_two_and_shrinks_by_one():
    schedule = HeuristicSchedule(start=3, batch=3, most=6)
    schedule.update([3, 3, 0], [3, 1, 0])  # row 0 all accepted, row 1 rejected, row 2 drafted nothing
    assert schedule.k == [5, 2, 3]
    schedule.update([5, 2, 3], [5, 0, 0])
    schedule.update([6, 1, 2], [0, 0, 0])
    assert schedule.k == [5, 1, 1]  # row 0 capped at 6 before shrinking; never below 1


def test_goodput_picks_the_length_that_maximises_tokens_per_second():
    alpha = torch.tensor([0.8, 0.8])
    flat = GoodputSchedule(max_len=6, batch=2, costs=[0.05, 1.0, 0.0])  # verification cost flat in k
    flat.alpha = alpha.clone()
    scores = [float(expected_tokens(alpha, k).sum()) / (0.05 * k + 1.0) for k in range(7)]
    assert flat.choose([0, 1]) == max(range(7), key=scores.__getitem__) == 6
    steep = GoodputSchedule(max_len=6, batch=2, costs=[0.3, 0.2, 0.5])  # big batch: every token verified costs
    steep.alpha = torch.tensor([0.3, 0.3])
    assert steep.choose([0, 1]) == 0


def test_goodput_at_zero_skips_the_draft_model():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    out = spec_adaptive(target, [[0, 1]], sampling=SamplingParams(temperature=0.0), max_new_tokens=30, draft=draft,
                        policy="goodput", costs=[10.0, 0.1, 0.1], draft_len=4)
    # drafting is never worth 10 s a token: after the first (measuring) step only rare k = 1 probes draft
    assert out.compute.draft_calls <= 1 + 4 + 4
    assert out.tokens == plain(target, [[0, 1]], sampling=SamplingParams(temperature=0.0), max_new_tokens=30).tokens


def test_bad_policy_options():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    kw = dict(sampling=SamplingParams(), max_new_tokens=4, draft=draft)
    with pytest.raises(ConfigError, match="policy must be one of"):
        spec_adaptive(target, [[0]], policy="fastest", **kw)
    with pytest.raises(ConfigError, match="costs takes policy 'goodput'"):
        spec_adaptive(target, [[0]], policy="heuristic", costs=[1, 1, 1], **kw)
