"""Lookahead decoding: the n-gram pool, the window's tree layout and its Jacobi shift pinned by hand;
lossless in distribution (with a power check), greedy equals plain greedy, batch rows equal
single-row runs, bad options one error each."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.kernels.tree import tree_depths, tree_mask
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, lookahead, plain
from ponder.search.decoding.lookahead import LookaheadWindow, NgramPool

TREE_MODULE = sys.modules["ponder.search.decoding.tree_verify"]
SAMPLES = 4000
NEW = 4
PROMPT = [0, 1, 2, 0, 1, 2, 0, 1]
SMALL = dict(window=2, ngram=2, guesses=2)


def test_pool_keeps_the_latest_distinct_grams_per_first_token():
    pool = NgramPool(capacity=2)
    for gram in ([2, 3], [4, 5], [2, 3]):
        pool.add(1, gram)
    assert pool.get(1) == [(2, 3), (4, 5)]  # a repeat moves to the front, no duplicate
    pool.add(1, [6, 7])
    assert pool.get(1) == [(6, 7), (2, 3)] and pool.get(9) == []


def test_window_tree_layout_and_jacobi_shift():
    row = LookaheadWindow([5, 6, 7], window=2, ngram=3, guesses=2)
    assert row.levels == [[6, 7]]  # level 0 starts from the prompt's last W tokens
    tree, columns = row.tree(9, limit=8)
    assert (tree.tokens, tree.parents, columns) == ([9, 6, 7], [-1, 0, 1], [1, 2])
    row.advance([1, 2])  # warming up: a new level, no n-gram yet
    assert row.levels == [[6, 7], [1, 2]] and row.pool.grams == {}
    tree, columns = row.tree(9, limit=8)
    # level 0 a chain under the root, level 1's column i hangs off level 0's column i
    assert (tree.tokens, tree.parents, columns) == ([9, 6, 7, 1, 2], [-1, 0, 1, 1, 2], [3, 4])
    # positions are depths: token (level j, column i) sits i + j + 1 past the root
    depths = tree_depths(tree_mask(torch.tensor([tree.parents])))[0].tolist()
    assert depths == [0, 1, 2, 2, 3]
    row.advance([3, 4])  # window full: each column's 3-gram enters the pool, the window shifts
    assert row.pool.get(6) == [(1, 3)] and row.pool.get(7) == [(2, 4)]
    assert row.levels == [[1, 2], [3, 4]]
    tree, columns = row.tree(6, limit=8)  # verification trie (1, 3) first, then the window
    assert tree.tokens[:3] == [6, 1, 3] and tree.parents[:3] == [-1, 0, 1] and len(tree) == 7
    tree, columns = row.tree(6, limit=2)  # the window's deepest guess (depth 3) does not fit
    assert (tree.tokens, columns) == ([6, 1, 3], None)


def _pvalue(sampling, stats=None) -> float:
    target = ToyChain(seed=0)
    out = lookahead(target, [PROMPT] * SAMPLES, sampling=sampling, max_new_tokens=NEW,
                    generators=candidate_generators(0, range(SAMPLES)), stats=stats, **SMALL)
    assert all(len(t) == NEW for t in out.tokens)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(PROMPT, NEW, sampling), SAMPLES)


def test_lookahead_matches_target_distribution():
    stats: dict = {}
    assert _pvalue(SamplingParams(temperature=1.0), stats) > 1e-3
    assert stats["accepted"] > SAMPLES // 5  # drafts really were accepted, not just plain steps


def test_chi_square_catches_lookahead_drawing_from_p_after_a_rejection(monkeypatch):
    monkeypatch.setattr(TREE_MODULE, "residual", lambda p, q: p)
    assert _pvalue(SamplingParams(temperature=1.0)) < 1e-6


def test_lookahead_batch_rows_equal_single_row_runs():
    target = ToyChain(seed=0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    kw = dict(sampling=SamplingParams(), max_new_tokens=12, window=3, ngram=3, guesses=2)
    batch = lookahead(target, prompts, generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = lookahead(target, [prompt], generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])


def test_lookahead_greedy_equals_plain_greedy(tiny_model_folders):
    import ponder

    llama = ponder.load("text", str(tiny_model_folders["llama"]))
    ids = [llama.encode(p) for p in ("R: 12+3*4\n", "R: 7-7-7+2\n", "Q: 1+2\n")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(llama, ids, sampling=greedy, max_new_tokens=30)
    for options in ({}, {"window": 1, "ngram": 2, "guesses": 1}, {"window": 5, "ngram": 4, "guesses": 3}):
        out = get_decoder("lookahead")(llama, ids, sampling=greedy, max_new_tokens=30, **options)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
        assert out.logprobs == [pytest.approx(lp, abs=1e-4) for lp in ref.logprobs]
    toy = ToyChain(seed=4)
    stats: dict = {}
    out = lookahead(toy, [PROMPT], sampling=greedy, max_new_tokens=20, stats=stats)
    assert out.tokens == plain(toy, [PROMPT], sampling=greedy, max_new_tokens=20).tokens
    assert stats["accepted"] > 0


@pytest.mark.parametrize("options, message", [
    ({"window": 0}, "window must be a positive integer"),
    ({"ngram": 1}, "ngram must be an integer >= 2"),
    ({"guesses": 0}, "guesses must be a positive integer"),
    ({"guesses": 2.0}, "guesses must be a positive integer"),
    ({"draft": ToyChain(seed=1)}, "takes no draft model"),
])
def test_lookahead_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        lookahead(ToyChain(seed=0), [PROMPT], sampling=SamplingParams(), max_new_tokens=4, **options)
