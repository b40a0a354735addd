"""The chain toolkit: the draft loops run a cache without row rollback one row at a time, with every
option the decoder was given, and the shared option checks name the bad value."""

from __future__ import annotations

import pytest
import torch
from toys_decoding import ToyCache, ToyChain

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder
from ponder.search.decoding.chain import (
    LoopStart,
    check_count,
    draft_and_verify,
    refuse_draft,
    require_draft,
    rows_roll_back,
)
from ponder.search.decoding.speculative import accept_drafts

PROMPTS = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]


class CopyLastProposer:
    """Drafts `repeat` copies of the last token; records what it was built from."""

    def __init__(self, start: LoopStart, repeat: int):
        self.start, self.repeat = start, repeat

    def propose(self, last, limits):
        return [[token] * min(self.repeat, limit) for token, limit in zip(last, limits)], None

    def accepted(self, num_accepted, final):
        pass


def test_rows_run_alone_get_their_own_prompt_generator_and_callbacks():
    target = ToyChain(seed=0, per_row_holes=False)
    generators = candidate_generators(3, range(3))
    built: list[CopyLastProposer] = []
    stopped, streamed = [], []

    def make_proposer(start):
        built.append(CopyLastProposer(start, repeat=2))
        return built[-1]

    def stop(row, tokens):
        stopped.append(row)
        return False

    out = draft_and_verify(target, PROMPTS, make_proposer, accept=accept_drafts, sampling=SamplingParams(),
                           max_new_tokens=6, generators=generators, stop=stop,
                           stream=lambda row, token: streamed.append((row, token)))
    assert [list(p.start.prompt_ids) for p in built] == [[p] for p in PROMPTS]  # one proposer per row
    assert [p.start.generators[0] is g for p, g in zip(built, generators)] == [True, True, True]
    assert all(p.start.compute is out.compute for p in built)  # every row counts into the one result
    assert sorted(set(stopped)) == [0, 1, 2]
    for row in range(3):  # stream saw each row's tokens under its own index, in order
        assert [t for r, t in streamed if r == row] == out.tokens[row]
    assert out.compute.tokens == sum(len(t) for t in out.tokens)


# (decoder, options that reach its proposer or its acceptance rule, a draft model or None)
OPTIONED = [
    ("speculative", {"draft_len": 1}, True),
    ("spec-adaptive", {"policy": "heuristic", "draft_len": 1}, True),
    ("bild", {"fallback": 0.95, "rollback": 0.5}, True),
    ("ead", {"entropy_threshold": 2.0}, True),
    ("prompt-lookup", {"draft_len": 1, "max_ngram": 1}, False),
    ("aded", {"decay": 1.0, "draft_len": 1}, False),
    ("sjd", {"draft_len": 1}, False),
    ("layer-skip", {"skip": [1], "draft_len": 1, "min_confidence": None}, False),
    ("tree", {"branching": [3]}, True),
    ("rsd", {"branching": [1, 1, 1]}, True),
    ("dyspec", {"budget": 1}, True),
    ("spectr", {"tree_width": 1, "draft_len": 1}, True),
]


class SelectOnlyCache(ToyCache):
    hide = None  # compacts a tree's accepted path, but cannot give rows different lengths


class TreeCacheOnly(ToyChain):
    """ToyChain whose cache has `select_positions` and no `hide`: tree decoders run its rows alone."""

    def new_cache(self):
        return SelectOnlyCache() if not self.per_row_holes else ToyCache()


class Layered(ToyChain):
    """ToyChain with layers to skip (what layer-skip needs); skipping changes nothing here."""

    num_layers = 4

    def skipping_layers(self, skip):
        from contextlib import nullcontext
        return nullcontext()


def _run(name, target, prompts, generators, options, with_draft):
    draft = ToyChain(seed=0, scale=1.0, per_row_holes=target.per_row_holes) if with_draft else None
    stats: dict = {}
    out = get_decoder(name)(target, prompts, sampling=SamplingParams(), max_new_tokens=10, generators=generators,
                            draft=draft, stats=stats, **options)
    return out, {key: value for key, value in stats.items() if key != "skip"}


@pytest.mark.parametrize("name, options, with_draft", OPTIONED, ids=[o[0] for o in OPTIONED])
def test_a_cache_without_row_rollback_runs_rows_alone_with_every_option(name, options, with_draft):
    model = {"layer-skip": Layered, "tree": TreeCacheOnly, "rsd": TreeCacheOnly, "dyspec": TreeCacheOnly,
             "spectr": TreeCacheOnly}.get(name, ToyChain)
    no_hide = model(seed=0, per_row_holes=False)
    fallback, fallback_stats = _run(name, no_hide, PROMPTS, candidate_generators(3, range(3)), options, with_draft)
    # the same options, one row per call: what the fallback must reproduce, counts included
    alone_stats: dict = {}
    for row, prompt in enumerate(PROMPTS):
        alone, stats = _run(name, model(seed=0), [prompt], candidate_generators(3, [row]), options, with_draft)
        assert alone.tokens[0] == fallback.tokens[row]
        assert alone.logprobs[0] == fallback.logprobs[row]
        for key, value in stats.items():
            alone_stats[key] = alone_stats.get(key, 0) + value
    assert fallback_stats == alone_stats
    # and the options matter: dropping them in the fallback would have shown
    default, default_stats = _run(name, no_hide, PROMPTS, candidate_generators(3, range(3)), {}, with_draft)
    assert (default.tokens, default_stats) != (fallback.tokens, fallback_stats)


def test_rows_roll_back_needs_every_cache_to_hide():
    assert rows_roll_back(ToyChain(seed=0), None)
    assert not rows_roll_back(ToyChain(seed=0), ToyChain(seed=1, per_row_holes=False))
    assert not rows_roll_back(ToyChain(seed=0, per_row_holes=False))


def test_shared_checks_name_the_bad_value():
    assert check_count("window", 3, "guesses") == 3
    with pytest.raises(ConfigError, match=r"window must be a positive integer \(guesses\), got 0"):
        check_count("window", 0, "guesses")
    with pytest.raises(ConfigError, match="ngram must be an integer >= 2 .* got True"):
        check_count("ngram", True, "n-gram size", low=2)
    with pytest.raises(ConfigError, match="decoder 'tree' needs a draft model"):
        require_draft("tree", None)
    with pytest.raises(ConfigError, match="decoder 'aded' drafts from a table and takes no draft model"):
        refuse_draft("aded", ToyChain(seed=1), "from a table")
    refuse_draft("aded", None, "from a table")  # no draft: nothing to refuse


def test_a_lossy_rule_is_what_the_loop_applies():
    # the loop runs the rule it is given: a rule that accepts nothing is plain decoding, one token per step
    def none_accepted(logits, drafts, draft_probs, sampling, generators):
        return torch.zeros(len(drafts), dtype=torch.long), logits[:, 0].argmax(-1).cpu()

    target = ToyChain(seed=0)
    stats: dict = {}
    out = draft_and_verify(target, PROMPTS, lambda start: CopyLastProposer(start, repeat=3), accept=none_accepted,
                           sampling=SamplingParams(temperature=0.0), max_new_tokens=5, stats=stats)
    plain = get_decoder("plain")(target, PROMPTS, sampling=SamplingParams(temperature=0.0), max_new_tokens=5)
    assert out.tokens == plain.tokens
    assert stats["accepted"] == 0 and stats["steps"] == 4
