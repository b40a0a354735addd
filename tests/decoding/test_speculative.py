"""Speculative sampling and prompt lookup: lossless in distribution, exact when greedy, batch rows
equal single-row runs, and per-row rollback leaves caches as if the rejected drafts were never fed."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, plain, prompt_lookup, speculative
from ponder.search.decoding.prompt_lookup import lookup_draft
from ponder.search.decoding.rollback import feed_rows, truncate_rows

SPEC_MODULE = sys.modules["ponder.search.decoding.speculative"]
SAMPLES = 6000
NEW = 4  # tokens compared jointly: vocab 3 -> 81 outcomes


def _outcomes(decoded) -> Counter:
    return Counter(tuple(t) for t in decoded.tokens)


def _spec_pvalue(sampling, draft_len=2, seed=0, decoder="speculative", **options):
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    prompt = [0, 1]
    out = get_decoder(decoder)(target, [prompt] * SAMPLES, sampling=sampling, max_new_tokens=NEW, draft=draft,
                               draft_len=draft_len, generators=candidate_generators(seed, range(SAMPLES)), **options)
    assert all(len(t) == NEW for t in out.tokens)
    return chi_square_pvalue(_outcomes(out), target.exact_distribution(prompt, NEW, sampling), SAMPLES)


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=2)],
                         ids=["t1", "t0.7-topk2"])
def test_speculative_matches_target_distribution(sampling):
    assert _spec_pvalue(sampling) > 1e-3


def test_adaptive_draft_length_matches_target_distribution():
    stats: dict = {}
    assert _spec_pvalue(SamplingParams(), draft_len=3, decoder="spec-adaptive", threshold=0.5, stats=stats) > 1e-3
    assert stats["accepted"] > 0


def test_chi_square_catches_resampling_from_p_after_rejection(monkeypatch):
    # negative control: the classic bug (after a rejection, draw from p instead of norm(max(0, p - q)))
    monkeypatch.setattr(SPEC_MODULE, "residual", lambda p, q: p)
    assert _spec_pvalue(SamplingParams(temperature=1.0)) < 1e-6


def test_plain_sampling_passes_the_same_test():
    target = ToyChain(seed=0)
    out = plain(target, [[0, 1]] * SAMPLES, sampling=SamplingParams(), max_new_tokens=NEW,
                generators=candidate_generators(0, range(SAMPLES)))
    assert chi_square_pvalue(_outcomes(out), target.exact_distribution([0, 1], NEW, SamplingParams()),
                             SAMPLES) > 1e-3


def test_prompt_lookup_matches_target_distribution():
    target = ToyChain(seed=0)
    prompt = [0, 1, 2, 0, 1, 2, 0, 1]
    stats: dict = {}
    out = prompt_lookup(target, [prompt] * SAMPLES, sampling=SamplingParams(), max_new_tokens=NEW, draft_len=3,
                        generators=candidate_generators(0, range(SAMPLES)), stats=stats)
    assert stats["accepted"] > SAMPLES // 2  # drafts really were accepted, not just plain steps
    assert chi_square_pvalue(_outcomes(out), target.exact_distribution(prompt, NEW, SamplingParams()),
                             SAMPLES) > 1e-3


def test_identical_draft_accepts_every_token():
    target = ToyChain(seed=0)
    out = speculative(target, [[0, 1]], sampling=SamplingParams(), max_new_tokens=9, draft=ToyChain(seed=0),
                      draft_len=3, generators=candidate_generators(0, [0]))
    # prefill gives token 1; each verify pass emits 3 drafts + 1 bonus
    assert len(out.tokens[0]) == 9 and out.compute.model_calls == 1 + 2
    assert out.compute.draft_calls == 1 + 2 * 3


@pytest.mark.parametrize("decoder", ["speculative", "spec-adaptive", "prompt-lookup"])
def test_batch_rows_equal_single_row_runs_on_toy(decoder):
    target = ToyChain(seed=0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    kw = {"draft": ToyChain(seed=1)} if decoder != "prompt-lookup" else {}
    fn = get_decoder(decoder)
    batch = fn(target, prompts, sampling=SamplingParams(), max_new_tokens=12,
               generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = fn(target, [prompt], sampling=SamplingParams(), max_new_tokens=12,
                   generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])
    # a cache without per-row holes falls back to one row at a time, with the same outputs
    no_holes = fn(ToyChain(seed=0, per_row_holes=False), prompts, sampling=SamplingParams(), max_new_tokens=12,
                  generators=candidate_generators(3, range(3)), **kw)
    assert no_holes.tokens == batch.tokens


def test_stop_eos_and_stream_rules_match_plain():
    target = ToyChain(seed=2, eos=2)
    prompts = [[0, 1], [1, 1, 0]]
    seen: list[tuple[int, int]] = []
    kw = dict(sampling=SamplingParams(temperature=0.0), max_new_tokens=10, stop=lambda row, toks: toks[-1:] == [1])
    ref = plain(target, prompts, **kw)
    out = speculative(target, prompts, draft=ToyChain(seed=3), draft_len=3,
                      stream=lambda row, tok: seen.append((row, tok)), **kw)
    assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
    assert set(out.stop_reasons) >= {"stop"}
    for row in range(2):
        assert out.logprobs[row] == pytest.approx(ref.logprobs[row])
        assert [tok for r, tok in seen if r == row] == out.tokens[row]


# ---- real (tiny random) transformers models -----------------------------------------------------


PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


def test_greedy_equals_plain_greedy(tiny_folder, llama):
    import ponder

    target = ponder.load("text", str(tiny_folder))
    ids = [target.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(target, ids, sampling=greedy, max_new_tokens=24)
    for draft_len in (1, 3, 6):
        out = speculative(target, ids, sampling=greedy, max_new_tokens=24, draft=llama, draft_len=draft_len)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
    out = prompt_lookup(target, ids, sampling=greedy, max_new_tokens=24, draft_len=4)
    assert out.tokens == ref.tokens
    out = get_decoder("spec-adaptive")(target, ids, sampling=greedy, max_new_tokens=24, draft=llama, threshold=0.6)
    assert out.tokens == ref.tokens


def test_sampled_batch_rows_equal_single_row_runs(qwen2, llama):
    ids = [qwen2.encode(p) for p in PROMPTS]
    sampling = SamplingParams(temperature=1.0)
    batch = speculative(qwen2, ids, sampling=sampling, max_new_tokens=20, draft=llama, draft_len=3,
                        generators=candidate_generators(7, range(3)))
    for row in range(3):
        alone = speculative(qwen2, ids[row:row + 1], sampling=sampling, max_new_tokens=20, draft=llama,
                            draft_len=3, generators=candidate_generators(7, [row]))
        assert alone.tokens[0] == batch.tokens[row]


def test_rejected_draft_leaves_cache_as_if_never_drafted(llama):
    prompt = llama.encode("Q: 3+4\n")
    kept, rejected, after = [5, 6], [7, 8, 9], [10]

    def run(feeds, rollback=None):
        cache = llama.new_cache()
        llama.prefill([prompt], cache)
        for tokens in feeds:
            llama.forward(torch.tensor([tokens]), cache)
        if rollback is not None:
            cache.truncate(rollback)
        return llama.forward(torch.tensor([after]), cache), cache

    clean, clean_cache = run([kept])
    rolled, rolled_cache = run([kept, rejected], rollback=len(prompt) + len(kept))
    assert torch.equal(clean, rolled)  # batch 1: truncation is bitwise exact
    assert rolled_cache.length == clean_cache.length
    for layer in range(llama.num_layers):
        assert torch.equal(clean_cache.store.keys(layer), rolled_cache.store.keys(layer))
    # drafts verified in the same forward as the kept tokens: equal up to float reduction order
    chunked, _ = run([kept + rejected], rollback=len(prompt) + len(kept))
    torch.testing.assert_close(chunked, clean, atol=1e-5, rtol=1e-5)


def test_per_row_rollback_equals_separate_rows(llama):
    # row 0 keeps 1 of 4 fed tokens, row 1 keeps all 4: row 0's three become holes
    prompts = [llama.encode("Q: 3+4\n"), llama.encode("Q: 10*2-1\n")]
    fed = [[5, 6, 7, 8], [9, 10, 11, 12]]
    keep = [1, 4]
    cache = llama.new_cache()
    llama.prefill(prompts, cache)
    start = cache.length
    feed_rows(llama, cache, fed)
    truncate_rows(cache, start, keep)
    both = feed_rows(llama, cache, [[20, 21], [22, 23]])  # [2, 2, V]
    for row in range(2):
        alone = llama.new_cache()
        llama.prefill([prompts[row]], alone)
        llama.forward(torch.tensor([fed[row][:keep[row]]]), alone)
        ref = llama.forward(torch.tensor([[20, 21], [22, 23]][row:row + 1]), alone)
        torch.testing.assert_close(both[row], ref[0], atol=1e-5, rtol=1e-5)


def test_feed_rows_of_different_lengths_hides_the_padding(llama):
    prompts = [llama.encode("Q: 3+4\n")] * 2
    cache = llama.new_cache()
    llama.prefill(prompts, cache)
    logits = feed_rows(llama, cache, [[5], [5, 6, 7]])
    nxt = feed_rows(llama, cache, [[9], [9]])
    alone = llama.new_cache()
    llama.prefill(prompts[:1], alone)
    ref_first = llama.forward(torch.tensor([[5]]), alone)
    ref_next = llama.forward(torch.tensor([[9]]), alone)
    torch.testing.assert_close(logits[0, :1], ref_first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[0], ref_next[0], atol=1e-5, rtol=1e-5)


def test_lookup_draft_copies_what_followed_the_latest_match():
    history = [1, 2, 3, 9, 1, 2, 4, 5, 1, 2]
    assert lookup_draft(history, 3, max_ngram=2) == [4, 5, 1]  # latest earlier "1 2" is at index 4
    assert lookup_draft([1, 2, 3], 3, max_ngram=3) == []
    assert lookup_draft([7, 8, 7], 2, max_ngram=3) == [8, 7]


# ---- bad input and the public surface ------------------------------------------------------------


def test_bad_input_errors(llama, qwen2):
    ids = [llama.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    with pytest.raises(ConfigError, match="draft_len must be a positive integer"):
        speculative(llama, ids, draft=qwen2, draft_len=0, **kw)
    with pytest.raises(ConfigError, match="needs a draft model"):
        speculative(llama, ids, **kw)
    with pytest.raises(ConfigError, match="threshold must be in"):
        get_decoder("spec-adaptive")(llama, ids, draft=qwen2, threshold=1.5, **kw)
    with pytest.raises(ConfigError, match="takes no draft model"):
        prompt_lookup(llama, ids, draft=qwen2, **kw)

    class OtherTokenizer:
        tokenizer = type("T", (), {"get_vocab": lambda self: {"a": 0}})()
        name = "other"

    with pytest.raises(ConfigError, match="different tokenizer"):
        speculative(llama, ids, draft=OtherTokenizer(), **kw)


def test_generate_routes_decoder_options(llama, qwen2):
    import ponder

    res = ponder.generate(qwen2, "Q: 1+2\n", strategy="best-of-n", n=3, verifier="self", decoder="speculative",
                          draft=llama, draft_len=2, temperature=0.0, max_new_tokens=8)
    ref = ponder.generate(qwen2, "Q: 1+2\n", strategy="best-of-n", n=3, verifier="self", temperature=0.0,
                          max_new_tokens=8)
    assert [c.output for c in res.candidates] == [c.output for c in ref.candidates]
    assert res.compute.draft_calls > 0 and ref.compute.draft_calls == 0
    with pytest.raises(ConfigError, match="draft_len"):
        ponder.generate(qwen2, "Q: 1+2\n", decoder="plain", draft_len=2)


def test_drafts_never_run_past_the_context(tiny_model_folders):
    import ponder

    gpt2 = ponder.load("text", str(tiny_model_folders["gpt2"]))  # learned positions: 64, no more
    ids = [gpt2.encode("Q: 1+2\n")]
    budget = gpt2.context_length - len(ids[0])
    greedy = SamplingParams(temperature=0.0)
    ref = plain(gpt2, ids, sampling=greedy, max_new_tokens=budget)
    out = prompt_lookup(gpt2, ids, sampling=greedy, max_new_tokens=budget, draft_len=16)
    assert out.tokens == ref.tokens
    out = speculative(gpt2, ids, sampling=greedy, max_new_tokens=budget, draft=gpt2, draft_len=16)
    assert out.tokens == ref.tokens
