"""RAPID: the draft reads a retrieved short context, the target verifies — lossless (chi-square on a
toy; token for token when greedy on zoo:pycode with a long prompt)."""

from __future__ import annotations

from collections import Counter

import pytest
from toys_decoding import ToyChain, chi_square_pvalue

import ponder
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import plain, rapid
from ponder.search.decoding.rapid import short_context

SAMPLES, NEW = 6000, 4


def test_rapid_samples_the_targets_distribution_with_a_draft_that_saw_less():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    prompt = [0, 1, 2, 2, 1, 0, 1, 2, 0, 1, 2]
    # toy tokens hold no words for BM25: the draft reads BOS, the chunk before the tail, the tail (5 of 11)
    assert short_context(draft, prompt, chunk=2, k=1, tail=2) == [0, 2, 0, 1, 2]
    sampling = SamplingParams(temperature=1.0)
    stats: dict = {}
    out = rapid(target, [prompt] * SAMPLES, sampling=sampling, max_new_tokens=NEW, draft=draft, draft_len=2,
                chunk=2, k=1, tail=2, generators=candidate_generators(0, range(SAMPLES)), stats=stats)
    counts = Counter(tuple(t) for t in out.tokens)
    assert chi_square_pvalue(counts, target.exact_distribution(prompt, NEW, sampling), SAMPLES) > 1e-3
    assert stats["draft_prompt_tokens"] == [5] and stats["accepted"] > 0  # one shared prefill of the draft


@pytest.fixture(scope="module")
def pycode():
    return ponder.load("text", "zoo:pycode"), ponder.load("text", "zoo:pycode-draft")


def test_greedy_rapid_on_a_long_code_prompt_is_the_targets_greedy_output(pycode):
    from ponder.bench.pycode_workload import pycode_workload

    target, draft = pycode
    workload = pycode_workload(target, count=2, prompt_tokens=1200, max_new_tokens=24)
    prompts = [target.encode(p) for p in workload.prompts]
    greedy = SamplingParams(temperature=0.0)
    stats: dict = {}
    fast = rapid(target, prompts, sampling=greedy, max_new_tokens=24, draft=draft, stats=stats)
    slow = plain(target, prompts, sampling=greedy, max_new_tokens=24)
    assert fast.tokens == slow.tokens
    assert all(n <= 1 + 4 * 64 + 128 < len(p) for n, p in zip(stats["draft_prompt_tokens"], prompts))
    assert stats["accepted"] > 0
