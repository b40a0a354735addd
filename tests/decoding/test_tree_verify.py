"""Tree verification machinery: the accepted path's cache equals a cache fed only that path, rejected
trees leave no trace, and the recursive rejection rules emit exactly the target distribution."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain

from ponder.kernels.sampling import SamplingParams
from ponder.search.decoding.tree_verify import (
    DraftTree,
    keep_paths,
    rrs,
    rrs_without_replacement,
    verify_trees,
    walk_trees,
)


def _tree() -> DraftTree:
    # root 40 -> {41, 42}; 41 -> 43; 42 -> {44, 45}; 45 -> 46
    tree = DraftTree([40], [-1])
    a, b = tree.add(0, 41), tree.add(0, 42)
    tree.add(a, 43)
    tree.add(b, 44)
    tree.add(tree.add(b, 45), 46)
    return tree


def test_accepted_path_cache_equals_a_cache_fed_only_the_path(llama):
    prompts = [llama.encode("Q: 3+4\n"), llama.encode("Q: 10*2-1\n")]
    trees = [_tree(), DraftTree.chain(40, [50, 51])]
    paths = [[0, 2, 5, 6], [0]]  # row 0 keeps 40 42 45 46; row 1 rejects its whole chain
    cache = llama.new_cache()
    llama.prefill(prompts, cache)
    start = cache.length
    logits = verify_trees(llama, cache, trees)  # [2, 7, V]
    keep_paths(cache, start, paths)
    after = llama.forward(torch.tensor([[7], [8]]), cache)  # [2, 1, V]
    for row in range(2):
        alone = llama.new_cache()
        llama.prefill([prompts[row]], alone)
        kept = [trees[row].tokens[n] for n in paths[row]]
        ref = llama.forward(torch.tensor([kept]), alone)  # [1, N, V]
        torch.testing.assert_close(logits[row, paths[row]], ref[0], atol=1e-5, rtol=1e-5)
        ref_after = llama.forward(torch.tensor([[7, 8][row]]).view(1, 1), alone)
        torch.testing.assert_close(after[row], ref_after[0], atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("path", [[0], [0, 2, 5]], ids=["rejected", "branch"])
def test_kept_cache_equals_a_never_drafted_cache(llama, path):
    prompt = llama.encode("Q: 3+4\n")
    cache = llama.new_cache()
    llama.prefill([prompt], cache)
    start = cache.length
    verify_trees(llama, cache, [_tree()])
    keep_paths(cache, start, [path])
    clean = llama.new_cache()
    llama.prefill([prompt], clean)
    llama.forward(torch.tensor([[_tree().tokens[n] for n in path]]), clean)
    assert cache.length == clean.length
    for layer in range(llama.num_layers):  # position by position, up to float reduction order
        torch.testing.assert_close(cache.store.keys(layer), clean.store.keys(layer), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.store.values(layer), clean.store.values(layer), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compact", [True, False], ids=["select-positions", "hide"])
def test_toy_rollback_keeps_exactly_the_path(compact):
    model = ToyChain(seed=0, compact=compact)
    cache = model.new_cache()
    model.prefill([[0, 1], [2, 2, 1]], cache)
    tree = DraftTree([0], [-1])
    for token in (1, 2):
        child = tree.add(0, token)
        tree.add(child, 0)
    start = cache.length
    logits = verify_trees(model, cache, [tree, DraftTree([1], [-1])])
    keep_paths(cache, start, [[0, 3, 4], [0]])
    assert cache.context(0) == [0, 1, 0, 2, 0] and cache.context(1) == [2, 2, 1, 1]
    torch.testing.assert_close(logits[0, 4], model.next_logits([0, 1, 0, 2, 0]))


def test_greedy_walk_follows_argmax_through_the_tree():
    tree = _tree()
    logits = torch.full((1, 7, 50), -5.0)
    for node, best in {0: 42, 2: 45, 5: 46, 6: 9}.items():
        logits[0, node, best] = 5.0
    paths, final = walk_trees(logits, [tree], SamplingParams(temperature=0.0), None)
    assert paths == [[0, 2, 5, 6]] and final == [9]


P = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
Q = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1])
N = 6000


def _emitted(rule, draw_without_replacement: bool, k: int = 3, q=Q) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(N):
        if q is None:
            draws = [2, 0]  # fixed choices
        elif draw_without_replacement:
            gumbel = -torch.log(-torch.log(torch.rand(len(q), generator=gen)))
            draws = (q.log() + gumbel).topk(k).indices.tolist()
        else:
            draws = torch.multinomial(q, k, replacement=True, generator=gen).tolist()
        counts[rule(P, q, draws, gen)] += 1
    return torch.tensor([counts[i] for i in range(len(P))], dtype=torch.float64)


def _chi_square_p(observed: torch.Tensor) -> float:
    expected = P.double() * N
    stat = float(((observed - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(P) - 1) / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("rule,without", [(rrs, False), (rrs_without_replacement, True)],
                         ids=["iid-draws", "without-replacement"])
def test_recursive_rejection_emits_the_target_distribution(rule, without):
    assert _chi_square_p(_emitted(rule, without)) > 1e-3


def test_fixed_choices_are_verified_losslessly():
    assert _chi_square_p(_emitted(rrs, False, q=None)) > 1e-3


def test_iid_rule_on_draws_without_replacement_is_caught():
    # power check: the i.i.d. rule misreads Gumbel-top-k draws; the test above must be able to fail
    assert _chi_square_p(_emitted(rrs, True)) < 1e-6
