"""Token Recycling: the adjacency-matrix update, warm start and BFS tree rules pinned by hand;
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
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, plain, token_recycling
from ponder.search.decoding.token_recycling import AdjacencyMatrix, learn_adjacency, tree_template

TREE_MODULE = sys.modules["ponder.search.decoding.tree_verify"]
SAMPLES = 3000
NEW = 3  # vocab 3 -> 27 outcomes
PROMPT = [0, 1, 2, 0, 1, 2, 0, 1]


def test_update_sets_each_token_row_to_its_latest_top_k():
    matrix = AdjacencyMatrix(vocab=6, topk=2)
    logits = torch.tensor([[0., 5, 4, 0, 0, 0],    # token 3 sees: 1 then 2
                           [9., 0, 0, 0, 0, 8],    # token 4 sees: 0 then 5
                           [0., 0, 0, 7, 0, 6]])   # token 3 again, later: 3 then 5 (wins)
    matrix.update(torch.tensor([3, 4, 3]), logits)
    assert matrix.table[3].tolist() == [3, 5] and matrix.table[4].tolist() == [0, 5]
    assert matrix.table[0].tolist() == [-1, -1]  # untouched rows stay empty
    assert matrix.seen.tolist() == [False, False, False, True, True, False]


def test_warm_start_fills_unseen_rows_with_prompt_successors_latest_first():
    matrix = AdjacencyMatrix(vocab=6, topk=2)
    matrix.update(torch.tensor([4]), torch.tensor([[0., 0, 1, 2, 0, 0]]))  # row 4 already from logits
    matrix.warm_start([1, 2, 1, 3, 1, 2, 4, 5])
    assert matrix.table[1].tolist() == [2, 3]  # latest successor of 1 is 2, then 3
    assert matrix.table[2].tolist() == [4, 1]
    assert matrix.table[4].tolist() == [3, 2]  # a row the target has set keeps its logits' top-k
    assert matrix.table[5].tolist() == [-1, -1]


def test_tree_grows_breadth_first_along_the_template():
    template = tree_template(5, topk=2, max_depth=3)
    assert template == [(0,), (1,), (0, 0), (0, 1), (0, 0, 0)]  # prefix-closed, shallow first
    matrix = AdjacencyMatrix(vocab=8, topk=2)
    matrix.table[:] = torch.tensor([[1, 2], [3, 4], [5, 6], [7, -1], [0, 0], [0, 0], [0, 0], [1, 1]])
    tree = matrix.tree(0, template, max_depth=3)
    # root 0 -> rank0 1, rank1 2; 1 -> 3, 4; 3 -> 7
    assert tree.tokens == [0, 1, 2, 3, 4, 7] and tree.parents == [-1, 0, 0, 1, 1, 3]
    assert matrix.tree(0, template, max_depth=1).tokens == [0, 1, 2]
    matrix.table[1] = torch.tensor([-1, 2])  # an empty entry drops its path and everything under it
    assert matrix.tree(0, template, max_depth=3).tokens == [0, 1, 2, 2]


def _pvalue(sampling, stats=None) -> float:
    target = ToyChain(seed=0)
    out = token_recycling(target, [PROMPT] * SAMPLES, sampling=sampling, max_new_tokens=NEW, topk=2, tree_size=4,
                          generators=candidate_generators(0, range(SAMPLES)), stats=stats)
    assert all(len(t) == NEW for t in out.tokens)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(PROMPT, NEW, sampling), SAMPLES)


def test_token_recycling_matches_target_distribution():
    stats: dict = {}
    assert _pvalue(SamplingParams(temperature=1.0), stats) > 1e-3
    assert stats["accepted"] > SAMPLES // 5  # drafts really were accepted, not just plain steps


def test_chi_square_catches_token_recycling_drawing_from_p_after_a_rejection(monkeypatch):
    # power check: after rejecting a fixed child the walk must draw from p without it
    monkeypatch.setattr(TREE_MODULE, "residual", lambda p, q: p)
    assert _pvalue(SamplingParams(temperature=1.0)) < 1e-6


def test_token_recycling_batch_rows_equal_single_row_runs():
    target = ToyChain(seed=0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    kw = dict(sampling=SamplingParams(), max_new_tokens=12, topk=2, tree_size=6)
    batch = token_recycling(target, prompts, generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = token_recycling(target, [prompt], generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])
    hide_only = token_recycling(ToyChain(seed=0, compact=False), prompts,
                                generators=candidate_generators(3, range(3)), **kw)
    assert hide_only.tokens == batch.tokens


def test_token_recycling_greedy_equals_plain_greedy(tiny_model_folders):
    import ponder

    llama = ponder.load("text", str(tiny_model_folders["llama"]))
    ids = [llama.encode(p) for p in ("R: 12+3*4\n", "R: 7-7-7+2\n", "Q: 1+2\n")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(llama, ids, sampling=greedy, max_new_tokens=30)
    for options in ({}, {"topk": 1, "tree_size": 3, "draft_len": 2}):
        stats: dict = {}
        out = get_decoder("token-recycling")(llama, ids, sampling=greedy, max_new_tokens=30, stats=stats, **options)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
        assert out.logprobs == [pytest.approx(lp, abs=1e-4) for lp in ref.logprobs]
        assert stats["accepted"] > 0 and out.compute.model_calls < 1 + sum(len(t) for t in ref.tokens)


def test_adjacency_learned_on_earlier_queries_starts_later_ones_and_is_never_changed():
    target = ToyChain(seed=4)
    greedy = SamplingParams(temperature=0.0)
    learned = learn_adjacency(target, [[2, 2, 1], [1, 0]], max_new_tokens=8, topk=2)
    assert learned.seen.any() and tuple(learned.table.shape) == (3, 2)
    for token in learned.seen.nonzero()[:, 0].tolist():  # a learned row is the target's top-2 after that token
        assert set(learned.table[token].tolist()) <= {0, 1, 2} and -1 not in learned.table[token].tolist()
    before = learned.table.clone()
    cold = token_recycling(target, [PROMPT], sampling=greedy, max_new_tokens=12, topk=2)
    warm = token_recycling(target, [PROMPT], sampling=greedy, max_new_tokens=12, topk=2, adjacency=learned)
    assert warm.tokens == cold.tokens == plain(target, [PROMPT], sampling=greedy, max_new_tokens=12).tokens
    assert torch.equal(learned.table, before)  # the decoder copies the start matrix
    with pytest.raises(ConfigError, match="adjacency matrix is"):
        token_recycling(target, [PROMPT], sampling=greedy, max_new_tokens=4, topk=1, adjacency=learned)


@pytest.mark.parametrize("options, message", [
    ({"topk": 0}, "topk must be a positive integer"),
    ({"tree_size": -1}, "tree_size must be a positive integer"),
    ({"tree_size": True}, "tree_size must be a positive integer"),
    ({"draft_len": 0}, "draft_len must be a positive integer"),
    ({"draft": ToyChain(seed=1)}, "takes no draft model"),
])
def test_token_recycling_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        token_recycling(ToyChain(seed=0), [PROMPT], sampling=SamplingParams(), max_new_tokens=4, **options)
