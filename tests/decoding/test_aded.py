"""ADED (adaptive tri-gram drafter): the table's update and draft rules pinned by hand, lossless in
distribution (with a power check), greedy equals plain greedy, batch rows equal single-row runs."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import aded, get_decoder, plain
from ponder.search.decoding.aded import TrigramTable

SPEC_MODULE = sys.modules["ponder.search.decoding.speculative"]
SAMPLES = 6000
NEW = 4
PROMPT = [0, 1, 2, 0, 1, 2, 0, 1]


def test_trigram_update_decays_older_continuations_then_adds_one():
    table = TrigramTable(decay=0.5)
    table.push([1, 2, 3, 1, 2, 4])
    assert table.trigram[(1, 2)] == {3: 0.5, 4: 1.0}  # 3 seen first, decayed once when 4 arrived
    assert table.trigram[(2, 3)] == {1: 1.0} and table.trigram[(3, 1)] == {2: 1.0}
    assert table.bigram[2] == {3: 0.5, 4: 1.0} and table.bigram[1] == {2: 1.5}
    table.push([1, 2, 3])
    assert table.trigram[(1, 2)] == {3: 1.25, 4: 0.5}  # 3 again: 0.5 * 0.5 + 1 beats 4's 1.0 * 0.5
    assert table.tail == [2, 3]


def test_trigram_draft_follows_the_heaviest_chain_and_backs_off_to_bigrams():
    table = TrigramTable(decay=0.5)
    table.push([1, 2, 3, 1, 2, 4, 1, 2])
    # (1, 2) -> 4 (latest), (2, 4) -> 1, (4, 1) -> 2, (1, 2) -> 4 ...
    assert table.draft(5) == [4, 1, 2, 4, 1]
    counting = TrigramTable(decay=1.0)
    counting.push([1, 2, 3, 1, 2, 4, 1, 2])
    assert counting.draft(1) == [3]  # plain counts tie 1-1: the smaller id wins
    backoff = TrigramTable(decay=0.5)
    backoff.push([5, 7, 8, 9, 7])
    assert backoff.trigram.get((9, 7)) is None and backoff.draft(2) == [8, 9]  # bi-gram 7 -> 8, then (7, 8) -> 9
    assert TrigramTable().draft(3) == [] and backoff.draft(0) == []
    unknown = TrigramTable()
    unknown.push([4, 5])
    assert unknown.draft(3) == []  # nothing ever followed 5


def _pvalue(sampling, stats=None) -> float:
    target = ToyChain(seed=0)
    out = aded(target, [PROMPT] * SAMPLES, sampling=sampling, max_new_tokens=NEW, draft_len=3,
               generators=candidate_generators(0, range(SAMPLES)), stats=stats)
    assert all(len(t) == NEW for t in out.tokens)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(PROMPT, NEW, sampling), SAMPLES)


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=2)],
                         ids=["t1", "t0.7-topk2"])
def test_aded_matches_target_distribution(sampling):
    stats: dict = {}
    assert _pvalue(sampling, stats) > 1e-3
    assert stats["accepted"] > SAMPLES // 4  # drafts really were accepted, not just plain steps


def test_chi_square_catches_aded_drawing_from_p_after_a_rejection(monkeypatch):
    # power check: after rejecting deterministic draft d the rule must draw from p without d
    monkeypatch.setattr(SPEC_MODULE, "residual", lambda p, q: p)
    assert _pvalue(SamplingParams(temperature=1.0)) < 1e-6


def test_aded_batch_rows_equal_single_row_runs():
    target = ToyChain(seed=0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    kw = dict(sampling=SamplingParams(), max_new_tokens=12, draft_len=4)
    batch = aded(target, prompts, generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = aded(target, [prompt], generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])
    no_holes = aded(ToyChain(seed=0, per_row_holes=False), prompts, generators=candidate_generators(3, range(3)),
                    **kw)
    assert no_holes.tokens == batch.tokens


def test_aded_greedy_equals_plain_greedy(tiny_model_folders):
    import ponder

    llama = ponder.load("text", str(tiny_model_folders["llama"]))
    ids = [llama.encode(p) for p in ("R: 12+3*4\n", "R: 7-7-7+2\n", "Q: 1+2\n")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(llama, ids, sampling=greedy, max_new_tokens=30)
    for draft_len, decay in ((1, 0.5), (6, 1.0)):
        out = get_decoder("aded")(llama, ids, sampling=greedy, max_new_tokens=30, draft_len=draft_len, decay=decay)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
        assert out.logprobs == [pytest.approx(lp, abs=1e-4) for lp in ref.logprobs]
    toy = ToyChain(seed=4)
    stats: dict = {}
    out = aded(toy, [PROMPT], sampling=greedy, max_new_tokens=20, stats=stats)
    assert out.tokens == plain(toy, [PROMPT], sampling=greedy, max_new_tokens=20).tokens
    assert stats["accepted"] > 0


@pytest.mark.parametrize("options, message", [
    ({"draft_len": 0}, "draft_len must be a positive integer"),
    ({"draft_len": 2.5}, "draft_len must be a positive integer"),
    ({"decay": 0.0}, "decay must be a number in"),
    ({"decay": 1.5}, "decay must be a number in"),
    ({"decay": True}, "decay must be a number in"),
    ({"draft": ToyChain(seed=1)}, "takes no draft model"),
])
def test_aded_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        aded(ToyChain(seed=0), [PROMPT], sampling=SamplingParams(), max_new_tokens=4, **options)
