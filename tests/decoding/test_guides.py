"""Guides (ponder.search.guides): CAD's rule on a real model, every strategy on a guided model, and
lossless decoders stay lossless with respect to the guided distribution (chi-square on a toy)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

import ponder
from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits
from ponder.search.core import candidate_generators
from ponder.search.decoding import get_decoder
from ponder.search.guides import cad, get_guide

SAMPLES = 6000
NEW = 4
CONTEXT, PROMPT = [2, 0], [0, 1]  # the toy sees position mod 3: the context shifts it


def _guided_exact(toy: ToyChain, alpha: float, sampling: SamplingParams) -> dict:
    """P(new tokens = s) under CAD's rule, by enumeration (the toy's logits are exact)."""
    out = {}
    for seq in itertools.product(range(toy.vocab), repeat=NEW):
        prob, done = 1.0, []
        for token in seq:
            z = (1 + alpha) * toy.next_logits(CONTEXT + PROMPT + done) - alpha * toy.next_logits(PROMPT + done)
            prob *= float(probs_from_logits(z[None], sampling)[0, token])
            done.append(token)
        out[seq] = prob
    return out


@pytest.mark.parametrize(("decoder", "options"), [("plain", {}), ("speculative", {"draft_len": 2}),
                                                  ("tree", {"branching": [2, 1]})])
def test_decoders_on_a_cad_guided_model_sample_the_guided_distribution(decoder, options):
    toy = ToyChain(seed=0)
    guided = cad(toy, context=CONTEXT, alpha=1.0)
    sampling = SamplingParams(temperature=1.0)
    ids = guided.encode(PROMPT)
    out = get_decoder(decoder)(guided, [ids] * SAMPLES, sampling=sampling, max_new_tokens=NEW,
                               generators=candidate_generators(0, range(SAMPLES)),
                               draft=None if decoder == "plain" else ToyChain(seed=1), **options)
    exact = _guided_exact(toy, 1.0, sampling)
    assert chi_square_pvalue(Counter(tuple(t) for t in out.tokens), exact, SAMPLES) > 1e-3
    # and the test can tell: the unguided model's own distribution (with the context) is rejected
    unguided = toy.exact_distribution(CONTEXT + PROMPT, NEW, sampling)
    assert chi_square_pvalue(Counter(tuple(t) for t in out.tokens), unguided, SAMPLES) < 1e-6


@pytest.fixture(scope="module")
def arith():
    return ponder.load("text", "zoo:arith")


def test_cad_logits_follow_the_rule_on_a_real_model_in_one_batched_forward(arith):
    context, prompt, alpha = "Q: 5+5\nA: 5+5=10\n", "Q: 1+2\n", 0.7
    guided = cad(arith, context=context, alpha=alpha)
    ids = guided.encode(prompt)
    assert ids == arith.encode(context + prompt)
    cache = guided.new_cache()
    logits = guided.prefill([ids, ids], cache)  # [2, V]
    with_c, without = arith.new_cache(), arith.new_cache()
    z_c = arith.prefill([arith.encode(context + prompt)], with_c)
    z = arith.prefill([arith.encode(prompt)], without)
    assert torch.allclose(logits[0], (1 + alpha) * z_c[0] - alpha * z[0], atol=1e-3)
    token = torch.tensor([[int(logits[0].argmax())]] * 2)
    step = guided.forward(token, cache)[:, -1]
    z_c, z = arith.forward(token[:1], with_c)[0, -1], arith.forward(token[:1], without)[0, -1]
    assert torch.allclose(step[1], (1 + alpha) * z_c - alpha * z, atol=1e-3)
    assert cache.inner.batch_size == 4  # two rows, two streams, one cache


def test_every_strategy_runs_on_a_guided_model_through_generate(arith):
    context = "Q: 12+7*3\nA: 7*3=21. 12+21=33. The answer is 33.\n"
    best = ponder.generate(arith, "Q: 12+7*3\n", strategy="best-of-n", n=3, verifier="exact", guide="cad",
                           context=context, guide_options={"alpha": 1.0}, max_new_tokens=40, temperature=0.7)
    assert best.config["guide"] == {"name": "cad", "alpha": 1.0, "context_chars": len(context)}
    beam = ponder.generate(arith, "Q: 12+7*3\n", strategy="beam", n=4, verifier="prm", guide="cad", context=context,
                           max_new_tokens=40, temperature=0.7, beam_width=2)
    assert beam.best is not None and beam.config["guide"]["name"] == "cad"
    greedy = ponder.generate(arith, "Q: 12+7*3\n", guide="cad", context=context, guide_options={"alpha": 0.0},
                             max_new_tokens=40, temperature=0.0)
    plain_with_context = ponder.generate(arith, context + "Q: 12+7*3\n", max_new_tokens=40, temperature=0.0)
    assert greedy.best.output == plain_with_context.best.output  # alpha 0 is plain decoding with the context


def test_bad_guides_are_one_clear_error(arith):
    with pytest.raises(ConfigError, match="unknown guide 'nope'; allowed: cad"):
        get_guide("nope")
    with pytest.raises(ConfigError, match="pass context=TEXT"):
        ponder.generate(arith, "Q: 1+2\n", guide="cad")
    with pytest.raises(ConfigError, match="alpha"):
        cad(arith, context="x", alpha=-1)
    with pytest.raises(ConfigError, match="guide 'cad' takes"):
        ponder.generate(arith, "Q: 1+2\n", guide="cad", context="x", guide_options={"beta": 1})


def _uscd_exact(toy: ToyChain, alpha: float, threshold: float, sampling: SamplingParams) -> dict:
    from ponder.search.guides.uscd import uncertainty

    out = {}
    for seq in itertools.product(range(toy.vocab), repeat=NEW):
        prob, done = 1.0, []
        for token in seq:
            z = toy.next_logits(CONTEXT + PROMPT + done)
            if float(uncertainty(z)) > threshold:
                z = (1 + alpha) * z - alpha * toy.next_logits(PROMPT[-1:] + done)
            prob *= float(probs_from_logits(z[None], sampling)[0, token])
            done.append(token)
        out[seq] = prob
    return out


def test_speculative_on_a_uscd_guided_model_samples_the_guided_distribution():
    from ponder.search.guides import uscd

    toy = ToyChain(seed=0)
    guided = uscd(toy, keep_lines=1, alpha=1.0, threshold=0.5)  # lame prompt: the prompt's last token
    ids = guided.encode(CONTEXT + PROMPT)
    sampling = SamplingParams(temperature=1.0)
    out = get_decoder("speculative")(guided, [ids] * SAMPLES, sampling=sampling, max_new_tokens=NEW,
                                     generators=candidate_generators(3, range(SAMPLES)), draft=ToyChain(seed=1),
                                     draft_len=2)
    counts = Counter(tuple(t) for t in out.tokens)
    assert chi_square_pvalue(counts, _uscd_exact(toy, 1.0, 0.5, sampling), SAMPLES) > 1e-3
    assert chi_square_pvalue(counts, toy.exact_distribution(CONTEXT + PROMPT, NEW, sampling), SAMPLES) < 1e-6


def test_uscd_contrasts_only_where_the_model_is_uncertain(arith):
    from ponder.search.guides import uscd
    from ponder.search.guides.uscd import lame_prompt, uncertainty

    prompt = "Q: 5+5\nA: 10\nQ: 12+7*3\n"
    assert lame_prompt(prompt, 1) == "Q: 12+7*3\n" and lame_prompt(prompt, 2) == "A: 10\nQ: 12+7*3\n"
    standard = arith.new_cache()
    z = arith.prefill([arith.encode(prompt)], standard)[0]
    z_lame = arith.prefill([arith.encode("Q: 12+7*3\n")], arith.new_cache())[0]
    u = float(uncertainty(z))
    for threshold, contrasted in ((max(0.0, u - 0.01), True), (min(1.0, u + 0.01), False)):
        guided = uscd(arith, alpha=0.5, threshold=threshold)
        ids = guided.encode(prompt)
        logits = guided.prefill([ids], guided.new_cache())[0]
        expected = 1.5 * z - 0.5 * z_lame if contrasted else z
        assert torch.allclose(logits, expected, atol=1e-3)
    with pytest.raises(ConfigError, match="not with a context"):
        ponder.generate(arith, prompt, guide="uscd", context="x")
    result = ponder.generate(arith, prompt, guide="uscd", guide_options={"threshold": 0.2}, max_new_tokens=16,
                             temperature=0.0)
    assert result.config["guide"]["name"] == "uscd" and result.best is not None
