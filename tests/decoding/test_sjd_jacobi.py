"""Speculative Jacobi Decoding (SJD), MC-SJD and greedy Jacobi: SJD and MC-SJD sample exactly plain
AR's distribution (seeded chi-square, with negative controls showing the test has power), greedy
Jacobi equals plain greedy token for token on a tiny Llama, batch rows equal single-row runs."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, jacobi, mc_sjd, plain, sjd
from ponder.search.decoding.mc_sjd import maximal_coupling
from ponder.search.decoding.sjd import SJDWindow

SPEC_MODULE = sys.modules["ponder.search.decoding.speculative"]
SAMPLES = 2500
NEW = 4  # tokens compared jointly: vocab 3 -> 81 outcomes
PROMPT = [0, 1]


T1 = SamplingParams()


def _pvalue(decoder: str, sampling=T1, init="random", seed=0, stats=None) -> float:
    model = ToyChain(seed=0)
    model.row_tokens = 2  # pretend rows of two tokens, so "horizon" guesses have a row above
    out = get_decoder(decoder)(model, [PROMPT] * SAMPLES, sampling=sampling, max_new_tokens=NEW, draft_len=2,
                               init=init, generators=candidate_generators(seed, range(SAMPLES)), stats=stats)
    assert all(len(t) == NEW for t in out.tokens)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, model.exact_distribution(PROMPT, NEW, sampling), SAMPLES)


@pytest.mark.parametrize("decoder,init,sampling", [
    ("sjd", "random", SamplingParams()),
    ("mc-sjd", "horizon", SamplingParams(temperature=0.7, top_k=2)),
], ids=["sjd-random-t1", "mc-sjd-horizon-t0.7-topk2"])
def test_sjd_and_mc_sjd_match_plain_sampling_distribution(decoder, init, sampling):
    stats: dict = {}
    assert _pvalue(decoder, sampling, init, stats=stats) > 1e-3
    assert stats["accepted"] > SAMPLES // 2  # drafts really were accepted, not plain steps in disguise


def test_chi_square_catches_drafts_tested_against_the_wrong_q(monkeypatch):
    # negative control: refined drafts recorded as if drawn uniformly (q != the p they came from)
    refine = SJDWindow.refine

    def wrong_q(self, row, logits, old, old_q):
        tokens, q = refine(self, row, logits, old, old_q)
        return tokens, torch.full_like(q, 1 / q.shape[-1])

    monkeypatch.setattr(SJDWindow, "refine", wrong_q)
    assert _pvalue("sjd") < 1e-6


def test_chi_square_catches_resampling_from_p_after_rejection(monkeypatch):
    monkeypatch.setattr(SPEC_MODULE, "residual", lambda p, q: p)  # the classic bug, here in SJD's test
    assert _pvalue("mc-sjd") < 1e-6


def test_maximal_coupling_keeps_the_old_token_as_often_as_possible_and_samples_p():
    q = torch.tensor([[0.5, 0.3, 0.2]]).expand(20000, 3)
    p = torch.tensor([[0.2, 0.3, 0.5]]).expand(20000, 3)
    gen = torch.Generator().manual_seed(0)
    old = torch.multinomial(q, 1, generator=gen)[:, 0]
    new = maximal_coupling(old, q, p, torch.rand(20000, generator=gen),
                           lambda w: torch.multinomial(w, 1, generator=gen)[:, 0])
    same = float((new == old).float().mean())
    assert same == pytest.approx(1 - 0.3, abs=0.02)  # P(equal) = 1 - TV(p, q) = sum min(p, q) = 0.7
    freq = torch.bincount(new, minlength=3).float() / 20000
    torch.testing.assert_close(freq, p[0], atol=0.015, rtol=0)


def test_coupling_keeps_more_drafts_than_independent_redraws():
    steps = {}
    for name in ("sjd", "mc-sjd"):
        stats: dict = {}
        model = ToyChain(seed=4, scale=0.6)  # flat-ish distributions: drafts get redrawn often
        get_decoder(name)(model, [PROMPT] * 200, sampling=SamplingParams(), max_new_tokens=20, draft_len=8,
                          generators=candidate_generators(1, range(200)), stats=stats)
        steps[name] = stats["row_steps"]
    assert steps["mc-sjd"] < steps["sjd"] < 200 * 19


@pytest.mark.parametrize("decoder", ["sjd", "mc-sjd", "jacobi"])
def test_batch_rows_equal_single_row_runs_on_toy(decoder):
    model = ToyChain(seed=0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    sampling = SamplingParams(temperature=0.0 if decoder == "jacobi" else 1.0)
    fn = get_decoder(decoder)
    batch = fn(model, prompts, sampling=sampling, max_new_tokens=12, draft_len=4,
               generators=candidate_generators(3, range(3)))
    for row, prompt in enumerate(prompts):
        alone = fn(model, [prompt], sampling=sampling, max_new_tokens=12, draft_len=4,
                   generators=candidate_generators(3, [row]))
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])
    no_holes = fn(ToyChain(seed=0, per_row_holes=False), prompts, sampling=sampling, max_new_tokens=12, draft_len=4,
                  generators=candidate_generators(3, range(3)))
    assert no_holes.tokens == batch.tokens


def test_jacobi_stops_and_streams_like_plain():
    model = ToyChain(seed=2, eos=2)
    prompts = [[0, 1], [1, 1, 0]]
    seen: list[tuple[int, int]] = []
    kw = dict(sampling=SamplingParams(temperature=0.0), max_new_tokens=10, stop=lambda row, toks: toks[-1:] == [1])
    ref = plain(model, prompts, **kw)
    out = jacobi(model, prompts, draft_len=5, stream=lambda row, tok: seen.append((row, tok)), **kw)
    assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
    for row in range(2):
        assert [tok for r, tok in seen if r == row] == out.tokens[row]


# ---- a tiny random Llama (text) -------------------------------------------------------------------


PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


def test_greedy_jacobi_equals_plain_greedy_on_tiny_llama(llama):
    ids = [llama.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(llama, ids, sampling=greedy, max_new_tokens=24)
    for draft_len in (1, 4, 9):
        stats: dict = {}
        out = jacobi(llama, ids, sampling=greedy, max_new_tokens=24, draft_len=draft_len, stats=stats,
                     generators=candidate_generators(0, range(3)))
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
        assert out.compute.model_calls == 1 + stats["steps"] <= ref.compute.model_calls
        for row in range(3):
            assert out.logprobs[row] == pytest.approx(ref.logprobs[row], abs=1e-4)
    # SJD at temperature 0 is greedy Jacobi
    assert sjd(llama, ids, sampling=greedy, max_new_tokens=24).tokens == ref.tokens
    assert mc_sjd(llama, ids, sampling=greedy, max_new_tokens=24).tokens == ref.tokens


def test_sampled_sjd_batch_rows_equal_single_rows_on_tiny_llama(llama):
    ids = [llama.encode(p) for p in PROMPTS]
    for fn in (sjd, mc_sjd):
        batch = fn(llama, ids, sampling=SamplingParams(), max_new_tokens=16, draft_len=5,
                   generators=candidate_generators(7, range(3)))
        for row in range(3):
            alone = fn(llama, ids[row:row + 1], sampling=SamplingParams(), max_new_tokens=16, draft_len=5,
                       generators=candidate_generators(7, [row]))
            assert alone.tokens[0] == batch.tokens[row]


def test_bad_options_are_config_errors(llama):
    ids = [llama.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    with pytest.raises(ConfigError, match="decoder 'jacobi' is greedy"):
        jacobi(llama, ids, **kw)
    with pytest.raises(ConfigError, match="draft_len must be a positive integer"):
        sjd(llama, ids, draft_len=0, **kw)
    with pytest.raises(ConfigError, match="init 'diagonal' is not allowed"):
        mc_sjd(llama, ids, init="diagonal", **kw)
    with pytest.raises(ConfigError, match="no image rows"):
        sjd(llama, ids, init="horizon", **kw)
    with pytest.raises(ConfigError, match="takes no draft model"):
        sjd(llama, ids, draft=llama, **kw)
