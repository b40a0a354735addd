"""Tree decoders (tree, dyspec, rsd, spectr): lossless in distribution with a power check, greedy equal to
plain greedy on a tiny Llama, batch rows equal single-row runs, one clear error per bad option."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder, plain
from ponder.search.decoding.spectr import kseq, kseq_rho

SAMPLES = 2000
NEW = 3  # tokens compared jointly: vocab 3 -> 27 outcomes
TREE_DECODERS = ["tree", "dyspec", "rsd", "spectr"]
OPTIONS = {"tree": {"branching": [2, 2, 1]}, "dyspec": {"budget": 6, "threshold": 0.02},
           "rsd": {"tree_width": 2}, "spectr": {"tree_width": 3}}


def _pvalue(decoder: str, sampling: SamplingParams, stats: dict | None = None, **options) -> float:
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    prompt = [0, 1]
    out = get_decoder(decoder)(target, [prompt] * SAMPLES, sampling=sampling, max_new_tokens=NEW, draft=draft,
                               draft_len=NEW, generators=candidate_generators(0, range(SAMPLES)), stats=stats,
                               **{**OPTIONS[decoder], **options})
    assert all(len(t) == NEW for t in out.tokens)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(prompt, NEW, sampling), SAMPLES)


@pytest.mark.parametrize("decoder", TREE_DECODERS)
def test_tree_decoder_matches_target_distribution(decoder):
    stats: dict = {}
    assert _pvalue(decoder, SamplingParams(temperature=1.0), stats) > 1e-3
    assert stats["accepted"] > SAMPLES // 5  # tree drafts really were accepted


def test_chi_square_catches_a_tree_walk_that_skips_the_residual(monkeypatch):
    # power check: after a rejected child, going on with p instead of norm(max(0, p - q)) is caught
    monkeypatch.setattr(sys.modules["ponder.search.decoding.tree_verify"], "_rejected", lambda p, q: p)
    assert _pvalue("rsd", SamplingParams(temperature=1.0)) < 1e-6


def test_kseq_rho_keeps_every_token_within_the_target():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.1, 0.2, 0.7])
    assert kseq_rho(p, q, 1)[0] == 1.0  # one draw: speculative sampling
    for count in (2, 3, 5):
        rho, beta = kseq_rho(p, q, count)
        assert 1.0 <= rho <= count
        accepted = torch.minimum(q, p / rho) * (1 - (1 - beta) ** count) / beta  # [V]
        assert bool((accepted <= p + 1e-6).all())


def test_kseq_emits_the_target_distribution_and_a_fixed_rho_fails():
    p = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
    q = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1])
    gen = torch.Generator().manual_seed(0)
    n = 3000

    def counts(rule):
        c = Counter(rule(p, q, torch.multinomial(q, 3, replacement=True, generator=gen).tolist(), gen)
                    for _ in range(n))
        return {(k,): v for k, v in c.items()}

    expected = {(i,): float(p[i]) for i in range(5)}
    assert chi_square_pvalue(counts(kseq), expected, n) > 1e-3

    def accept_first_match(p, q, draws, gen):  # ρ = 1 on every draw without the residual bookkeeping
        for token in draws:
            if float(torch.rand((), generator=gen)) * float(q[token]) < float(p[token]):
                return token
        return int(torch.multinomial(p, 1, generator=gen))

    assert chi_square_pvalue(counts(accept_first_match), expected, n) < 1e-6


@pytest.mark.parametrize("decoder", TREE_DECODERS)
def test_batch_rows_equal_single_row_runs_on_toy(decoder):
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    fn = get_decoder(decoder)
    kw = dict(sampling=SamplingParams(), max_new_tokens=10, draft=draft, **OPTIONS[decoder])
    batch = fn(target, prompts, generators=candidate_generators(3, range(3)), **kw)
    for row, prompt in enumerate(prompts):
        alone = fn(target, [prompt], generators=candidate_generators(3, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]
        assert alone.logprobs[0] == pytest.approx(batch.logprobs[row])
    # a cache that hides instead of compacting gives the same rows
    hidden = fn(ToyChain(seed=0, compact=False), prompts, generators=candidate_generators(3, range(3)), **kw)
    assert hidden.tokens == batch.tokens


# ---- real (tiny random) transformers models -----------------------------------------------------


PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


@pytest.mark.parametrize("decoder", TREE_DECODERS)
def test_greedy_equals_plain_greedy_on_llama(llama, qwen2, decoder):
    ids = [llama.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(llama, ids, sampling=greedy, max_new_tokens=20)
    stats: dict = {}
    out = get_decoder(decoder)(llama, ids, sampling=greedy, max_new_tokens=20, draft=qwen2, draft_len=3,
                               tree_width=3, stats=stats)
    assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons
    for row in range(len(ids)):
        assert out.logprobs[row] == pytest.approx(ref.logprobs[row], abs=1e-4)
    assert out.compute.model_calls == 1 + stats["steps"]


def test_identical_draft_accepts_the_whole_tree_path(llama):
    ids = [llama.encode(PROMPTS[0])]
    out = get_decoder("tree")(llama, ids, sampling=SamplingParams(temperature=0.0), max_new_tokens=9, draft=llama,
                              draft_len=3, tree_width=2)
    # prefill gives one token; each verify step accepts 3 drafts + 1 final
    assert len(out.tokens[0]) == 9 and out.compute.model_calls == 1 + 2


def test_sampled_batch_rows_equal_single_rows_on_llama(llama, qwen2):
    ids = [llama.encode(p) for p in PROMPTS]
    kw = dict(sampling=SamplingParams(temperature=1.0), max_new_tokens=12, draft=qwen2, draft_len=2, tree_width=2)
    batch = get_decoder("rsd")(llama, ids, generators=candidate_generators(5, range(3)), **kw)
    for row in range(3):
        alone = get_decoder("rsd")(llama, ids[row:row + 1], generators=candidate_generators(5, [row]), **kw)
        assert alone.tokens[0] == batch.tokens[row]


def test_bad_input_errors(llama, qwen2):
    ids = [llama.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    for decoder in TREE_DECODERS:
        fn = get_decoder(decoder)
        with pytest.raises(ConfigError, match="draft_len must be a positive integer"):
            fn(llama, ids, draft=qwen2, draft_len=0, **kw)
        with pytest.raises(ConfigError, match="tree_width must be a positive integer"):
            fn(llama, ids, draft=qwen2, tree_width=0, **kw)
        with pytest.raises(ConfigError, match="needs a draft model"):
            fn(llama, ids, **kw)

    class OtherTokenizer:
        tokenizer = type("T", (), {"get_vocab": lambda self: {"a": 0}})()
        name = "other"

    with pytest.raises(ConfigError, match="different tokenizer"):
        get_decoder("rsd")(llama, ids, draft=OtherTokenizer(), **kw)
    with pytest.raises(ConfigError, match="branching must be"):
        get_decoder("tree")(llama, ids, draft=qwen2, branching=[2, 0], **kw)
    with pytest.raises(ConfigError, match="budget must be"):
        get_decoder("dyspec")(llama, ids, draft=qwen2, budget=0, **kw)
    with pytest.raises(ConfigError, match="threshold must be in"):
        get_decoder("dyspec")(llama, ids, draft=qwen2, threshold=1.5, **kw)


def test_draft_tree_scores_equal_plain_forwards_on_chain_and_branching_trees(llama):
    from ponder.search.core import Compute
    from ponder.search.decoding.tree_draft import DraftTreeModel
    from ponder.search.decoding.tree_verify import DraftTree

    prompt = llama.encode(PROMPTS[0])
    vocab = llama.model.config.vocab_size
    drafter = DraftTreeModel(llama, [prompt], Compute(), sampling=SamplingParams(temperature=0.0), vocab=vocab)

    def reference(tokens):  # softmax after prompt + tokens, from a fresh cache
        cache = llama.new_cache()
        llama.prefill([prompt], cache)
        return llama.forward(torch.tensor([tokens]), cache)[0, -1].softmax(-1)

    torch.testing.assert_close(drafter.root([40])[0], reference([40]), atol=1e-5, rtol=1e-5)
    tree = DraftTree([40], [-1])
    a = tree.add(0, 41)
    q_chain = drafter.score([tree], [[a]])[0][0]  # a chain: fed incrementally
    torch.testing.assert_close(q_chain, reference([40, 41]), atol=1e-5, rtol=1e-5)
    b = tree.add(a, 42)
    c = tree.add(0, 43)  # a branch: the tree is re-fed with its mask
    q_b, q_c = drafter.score([tree], [[b, c]])[0]
    torch.testing.assert_close(q_b, reference([40, 41, 42]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q_c, reference([40, 43]), atol=1e-5, rtol=1e-5)
    assert drafter.cache.length == len(prompt) + 1  # rolled back to the root after scoring


def test_pruned_tree_keeps_nodes_up_to_the_depth_and_their_draws():
    from ponder.search.decoding.tree_verify import DraftTree

    tree = DraftTree([5], [-1], draws=[[1, 2]])
    one = tree.add(0, 1)
    tree.draws.append([3])
    tree.add(0, 2)
    tree.draws.append([])
    tree.add(one, 3)
    tree.draws.append([])
    cut = tree.pruned(1)
    assert cut.tokens == [5, 1, 2] and cut.parents == [-1, 0, 0]
    assert cut.node_draws(1) == [3] and cut.children(1) == {}  # token 3 stays a draw, no longer a node
    assert tree.pruned(2) is tree
